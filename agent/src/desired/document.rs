//! One datastore file's text, YAML or JSON, into its objects one at a time.
//!
//! A 10,000-node cluster's `kubectl get ipamblocks -o yaml` is tens of megabytes and millions
//! of YAML nodes. Each object of a List is read straight into its types and handed to the
//! loader, so memory follows what is kept of the objects, not their text. JSON goes through serde_json (several times faster than a YAML parser on the
//! same text); the block YAML that kubectl and calicoctl print through [`super::block_yaml`];
//! any other YAML through serde-saphyr with budgets proportional to the file's size, and a
//! fixed bound on what aliases may expand to, so that an alias bomb is refused however large
//! the file around it.

use std::{cell::RefCell, path::Path};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{
    Datastore, block_yaml,
    files::{self, DatastoreError},
    halves::Halves,
    object::{Failure, ObjectSeed, Parts},
};

/// How a file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// `*.json` is JSON; so is text that starts like JSON (`{` or `[`, as `kubectl … -o json`
/// pastes do), unless it then turns out to be YAML's flow style (see [`load`]).
pub fn format_of(file: &str, text: &str) -> Format {
    format_by(file, text.as_bytes())
}

/// [`format_of`] from the file's first bytes.
fn format_by(file: &str, head: &[u8]) -> Format {
    let head = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let starts_like_json = head
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));
    if file.ends_with(".json") || starts_like_json {
        Format::Json
    } else {
        Format::Yaml
    }
}

/// Alias expansion is bounded whatever the file's size: Calico objects need no aliases, and
/// hand-written anchors replay a few hundred events, not this many.
pub const MAX_ALIAS_REPLAY: usize = 100_000;

/// Adds every object of the file at `path` to `ds`. The file is read whole and parsed from
/// memory: serde_json reads a slice three times as fast as a stream. A large List is read in
/// two halves on two threads.
pub fn load_file(ds: &mut Datastore, path: &Path) -> Result<(), DatastoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| DatastoreError::Read {
        path: path.into(),
        source,
    })?;
    let file = path.display().to_string();
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    if text.len() < HALVES_FROM_BYTES || !two_cores {
        return load(ds, &file, &text);
    }
    let format = format_of(&file, &text);
    let halves = match Halves::cut(text, format) {
        Ok(h) => h,
        Err(text) => return load(ds, &file, &text),
    };
    let (first, second) = std::thread::scope(|s| {
        let second = s.spawn(|| fast_path(&file, &halves.second, format));
        (fast_path(&file, &halves.first, format), second.join())
    });
    match (first, second) {
        // The first half's items that name no kind would take it from the List's, which is
        // in the second half.
        (Some(a), Ok(Some(b))) if a.kindless == 0 => {
            tracing::debug!(file, "read in two halves");
            ds.append(a.ds);
            ds.append(b.ds);
            Ok(())
        }
        // Both halves in the block subset: read whole, the items take the List's kind.
        (Some(_), Ok(Some(_))) => load(ds, &file, &halves.join()),
        // YAML the subset did not take is not offered to it again.
        _ if format == Format::Yaml => general_yaml(ds, &file, &halves.join()),
        _ => load(ds, &file, &halves.join()),
    }
}

/// Files this large are read in halves: below it, a thread costs more than it saves.
const HALVES_FROM_BYTES: usize = 4 << 20;

/// Reads `text` by the fast readers alone (serde_json, the block YAML subset), into a
/// datastore of its own; `None` on anything they do not read or any error, whose words are
/// left to [`load`].
fn fast_path(file: &str, text: &str, format: Format) -> Option<Loader> {
    let mut loader = Loader::new(Datastore::default(), file);
    let read = match format {
        Format::Json => json(&mut loader, serde_json::Deserializer::from_str(text)).is_ok(),
        Format::Yaml => {
            match block_yaml::read_documents(text, |doc| DocSeed(&mut loader).deserialize(doc)) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(file, "read by the general YAML parser: {e}");
                    false
                }
            }
        }
    };
    (read && loader.failed.is_none()).then_some(loader)
}

/// Adds every object of `text` to `ds`. The first bad object stops the load with its error.
pub fn load(ds: &mut Datastore, file: &str, text: &str) -> Result<(), DatastoreError> {
    if format_of(file, text) == Format::Json {
        let mut loader = Loader::new(std::mem::take(ds), file);
        let result = json(&mut loader, serde_json::Deserializer::from_str(text));
        let loaded = loader.loaded;
        *ds = loader.ds;
        match result {
            // `{a: 1}` is YAML's flow style, not JSON: only a file that is not named *.json
            // and failed before its first object is read again as YAML.
            Err(DatastoreError::Json { .. }) if loaded == 0 && !file.ends_with(".json") => {}
            other => return other,
        }
    }
    yaml(ds, file, text)
}

fn json<'de, R: serde_json::de::Read<'de>>(
    loader: &mut Loader,
    mut de: serde_json::Deserializer<R>,
) -> Result<(), DatastoreError> {
    // Several documents may follow each other (`cat a.json b.json`).
    loop {
        let parsed = DocSeed(loader).deserialize(&mut de);
        if let Some(e) = loader.failed.take() {
            return Err(e);
        }
        parsed.map_err(|e| DatastoreError::Json {
            file: loader.file.clone(),
            message: e.to_string(),
        })?;
        if de.end().is_ok() {
            return Ok(());
        }
    }
}

thread_local! {
    /// serde-saphyr reads a stream of documents only into `Deserialize` types, which cannot
    /// carry the loader; it waits here while one file is parsed on this thread.
    static YAML_LOADER: RefCell<Option<Loader>> = const { RefCell::new(None) };
}

fn yaml(ds: &mut Datastore, file: &str, text: &str) -> Result<(), DatastoreError> {
    // The printers' block YAML first: anything else, and any error (whose words are the
    // general parser's), is read again by serde-saphyr.
    if let Some(loader) = fast_path(file, text, Format::Yaml) {
        ds.append(loader.ds);
        return Ok(());
    }
    general_yaml(ds, file, text)
}

/// Any YAML, by serde-saphyr within the budgets of [`yaml_options`].
fn general_yaml(ds: &mut Datastore, file: &str, text: &str) -> Result<(), DatastoreError> {
    YAML_LOADER.with(|cell| {
        *cell.borrow_mut() = Some(Loader::new(std::mem::take(ds), file));
    });
    let parsed = serde_saphyr::from_str_multiple_with_options::<YamlDoc, Vec<YamlDoc>>(
        text,
        yaml_options(text.len()),
    );
    let Some(mut loader) = YAML_LOADER.with(|cell| cell.borrow_mut().take()) else {
        return Err(DatastoreError::Yaml {
            file: file.into(),
            message: "the loader was lost while parsing".into(),
        });
    };
    *ds = std::mem::take(&mut loader.ds);
    if let Some(e) = loader.failed.take() {
        return Err(e);
    }
    parsed.map(drop).map_err(|e| yaml_error(file, &e))
}

/// YAML 1.2 booleans only (a node named `n` or a label `on` stays a string), and budgets that
/// grow with the file: a YAML node takes at least a byte of text, so a node budget equal to
/// the size never refuses a real file, while what aliases replay stays bounded.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(len);
    budget.max_events = budget.max_events.max(len.saturating_mul(3));
    budget.max_documents = budget.max_documents.max(len / 3);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len);
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = MAX_ALIAS_REPLAY;
    options
}

/// Limits reached are refusals in the operator's words; anything else is invalid YAML.
fn yaml_error(file: &str, e: &serde_saphyr::Error) -> DatastoreError {
    use serde_saphyr::{Error, budget::BudgetBreach};
    // The cause, under the wrappers that only add source locations.
    let mut cause = e;
    while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = cause {
        cause = error;
    }
    let alias_bomb = match cause {
        Error::AliasReplayLimitExceeded { .. }
        | Error::AliasExpansionLimitExceeded { .. }
        | Error::AliasReplayStackDepthExceeded { .. } => true,
        Error::Budget { breach, .. } => matches!(
            breach,
            BudgetBreach::Aliases { .. }
                | BudgetBreach::Anchors { .. }
                | BudgetBreach::AliasAnchorRatio { .. }
                | BudgetBreach::RecordedAnchorEvents { .. }
                | BudgetBreach::RecordedAnchorBytes { .. }
        ),
        _ => false,
    };
    if alias_bomb {
        return DatastoreError::Refused {
            file: file.into(),
            why: format!(
                "its YAML aliases (*name) expand beyond {MAX_ALIAS_REPLAY} nodes, as an alias \
                 bomb (\"billion laughs\") does; Calico objects need no aliases"
            ),
        };
    }
    if let Error::Budget { breach, .. } = cause {
        return DatastoreError::Refused {
            file: file.into(),
            why: format!("beyond the YAML parser's limits ({breach:?})"),
        };
    }
    DatastoreError::Yaml {
        file: file.into(),
        message: e.to_string(),
    }
}

/// Where one file's objects go.
struct Loader {
    ds: Datastore,
    file: String,
    loaded: usize,
    /// Objects that named no kind and were given their List's (or none).
    kindless: usize,
    /// The first bad object's error; the parser is stopped with a placeholder meanwhile.
    failed: Option<DatastoreError>,
}

impl Loader {
    fn new(ds: Datastore, file: &str) -> Self {
        Self {
            ds,
            file: file.into(),
            loaded: 0,
            kindless: 0,
            failed: None,
        }
    }

    fn object<E: de::Error>(&mut self, v: &Value, list_kind: Option<&str>) -> Result<(), E> {
        self.loaded += 1;
        let result = files::load_value(&mut self.ds, &self.file, v, list_kind);
        self.stop_on(result)
    }

    fn parts<E: de::Error>(&mut self, parts: Parts, list_kind: Option<&str>) -> Result<(), E> {
        self.loaded += 1;
        let result = files::add(&mut self.ds, &self.file, parts, list_kind);
        self.stop_on(result)
    }

    /// A bad object stops the parser; its error is kept to be returned instead.
    fn stop_on<E: de::Error>(&mut self, result: Result<(), DatastoreError>) -> Result<(), E> {
        result.map_err(|e| {
            self.failed = Some(e);
            E::custom("stopped at a bad object")
        })
    }

    /// An object whose field failed while it was read.
    fn field_failed(&mut self, f: Failure) {
        let ctx = files::Ctx {
            file: &self.file,
            object: f.object.clone(),
        };
        self.failed = Some(ctx.failed(f));
    }
}

/// A document: one object, or a List whose items are loaded as they are parsed.
struct DocSeed<'a>(&'a mut Loader);

impl<'de> DeserializeSeed<'de> for DocSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Calico object or a List of them")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    /// A bare sequence of objects, as a List's items.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let mut waiting = Vec::new();
        Items {
            loader: self.0,
            waiting: &mut waiting,
        }
        .visit_seq(seq)?;
        for item in waiting {
            self.0.parts(item, None)?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut head = serde_json::Map::new();
        // Items without a kind take it from the List's (`IPPoolList`), which kubectl's JSON
        // prints after them: they wait for it; the others are loaded as they come.
        let mut waiting = Vec::new();
        let mut list = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "items" {
                list = true;
                map.next_value_seed(Items {
                    loader: self.0,
                    waiting: &mut waiting,
                })?;
            } else {
                let v: Value = map.next_value()?;
                head.insert(key, v);
            }
        }
        if !list {
            return self.0.object(&Value::Object(head), None);
        }
        let kind = head.get("kind").and_then(Value::as_str).unwrap_or("");
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for item in waiting {
            self.0.parts(item, item_kind)?;
        }
        Ok(())
    }
}

struct Items<'a> {
    loader: &'a mut Loader,
    waiting: &'a mut Vec<Parts>,
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of Calico objects")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let mut failure = None;
            let item = seq.next_element_seed(ObjectSeed {
                failure: &mut failure,
            });
            let item = match item {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(()),
                Err(e) => {
                    if let Some(f) = failure {
                        self.loader.field_failed(f);
                    }
                    return Err(e);
                }
            };
            if item.kind.is_some() {
                self.loader.parts(item, None)?;
            } else {
                self.loader.kindless += 1;
                self.waiting.push(item);
            }
        }
    }
}

/// One YAML document, loaded into the thread's [`YAML_LOADER`] while it is parsed.
struct YamlDoc;

impl<'de> de::Deserialize<'de> for YamlDoc {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        YAML_LOADER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let loader = slot
                .as_mut()
                .ok_or_else(|| de::Error::custom("no loader for this YAML document"))?;
            DocSeed(loader).deserialize(d).map(|()| YamlDoc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xtask::cluster::{Cluster, Format as Printed};

    fn load_one(file: &str, text: &str) -> Result<Datastore, DatastoreError> {
        let mut ds = Datastore::default();
        load(&mut ds, file, text).map(|()| ds)
    }

    fn load_cluster(c: Cluster, printed: Printed) -> Datastore {
        let mut ds = Datastore::default();
        for (name, text) in c.datastore(printed) {
            load(&mut ds, &name, &text).unwrap_or_else(|e| panic!("{e}"));
        }
        ds
    }

    /// Beyond the 250,000 YAML nodes that refused a 2,000-node IPAMBlock list before.
    #[test]
    fn thousands_of_nodes_load_from_yaml_and_json_alike() {
        let c = Cluster::new(2_500);
        let yaml = load_cluster(c, Printed::Yaml);
        let json = load_cluster(c, Printed::Json);
        assert_eq!(
            (yaml.nodes.len(), yaml.blocks.len(), yaml.affinities.len()),
            (2_501, 2_501, 2_501)
        );
        assert_eq!(yaml.blocks[7].allocations.len(), 9);
        assert_eq!(yaml.warnings, Vec::<String>::new());
        assert_eq!(
            serde_json::to_value(&yaml).ok(),
            serde_json::to_value(&json).ok()
        );
    }

    /// A file of its own under the system's temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            // A directory per file: tests running at once write files of the same name.
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("agent-document-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("written");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn a_large_list_read_in_halves_is_the_list_read_whole() {
        for printed in [Printed::Yaml, Printed::Json] {
            for (name, text) in Cluster::new(1_000).datastore(printed) {
                let format = format_of(&name, &text);
                let cut = text.len() >= HALVES_FROM_BYTES;
                if name.contains("ipam") {
                    assert!(cut && Halves::cut(text.clone(), format).is_ok(), "{name}");
                }
                let file = TempFile::new(&name, &text);
                let mut halves = Datastore::default();
                load_file(&mut halves, &file.0).expect("loads");
                let whole = load_one(&name, &text).expect("loads");
                assert_eq!(
                    serde_json::to_value(&halves).ok(),
                    serde_json::to_value(&whole).ok(),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn a_large_list_outside_the_block_subset_is_read_by_the_general_parser() {
        let (name, text) = Cluster::new(1_000)
            .datastore(Printed::Yaml)
            .into_iter()
            .find(|(name, _)| name.contains("ipam"))
            .expect("the IPAM file");
        // A comment after a value, late in the file: the subset reader refuses the half.
        let at = text.rfind("    deleted: false\n").expect("a block");
        let commented = format!(
            "{}    deleted: false # kept\n{}",
            &text[..at],
            &text[at + "    deleted: false\n".len()..]
        );
        assert!(fast_path(&name, &commented, Format::Yaml).is_none());
        let file = TempFile::new(&name, &commented);
        let mut ds = Datastore::default();
        load_file(&mut ds, &file.0).expect("loads");
        assert_eq!(
            serde_json::to_value(&ds).ok(),
            serde_json::to_value(load_one(&name, &text).expect("loads")).ok()
        );
    }

    #[test]
    fn items_in_the_first_half_without_a_kind_take_the_lists_from_the_second() {
        let items: Vec<serde_json::Value> = (0..40_000)
            .map(|i| {
                serde_json::json!({"metadata": {"name": format!("pool-{i}")},
                    "spec": {"cidr": format!("10.{}.{}.0/24", i / 256, i % 256), "natOutgoing": true}})
            })
            .collect();
        let list = serde_json::json!({"apiVersion": "projectcalico.org/v3", "items": items,
            "kind": "IPPoolList", "metadata": {}});
        let text = serde_json::to_string_pretty(&list).expect("JSON");
        assert!(text.len() >= HALVES_FROM_BYTES);
        let file = TempFile::new("pools.json", &text);
        let mut ds = Datastore::default();
        load_file(&mut ds, &file.0).expect("loads");
        assert_eq!(ds.pools.len(), 40_000);
        assert_eq!(ds.warnings, Vec::<String>::new());
    }

    #[test]
    fn an_alias_bomb_is_refused_naming_the_file() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = load_one("laughs.yaml", &bomb).expect_err("refused");
        assert!(matches!(err, DatastoreError::Refused { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("laughs.yaml: refused: its YAML aliases"),
            "{text}"
        );
        // A few aliases, as hand-written files have them, are fine.
        let ok = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: projectcalico.org/v3\n  \
                  kind: IPPool\n  metadata: {name: p}\n  spec: &s {cidr: 10.0.0.0/16}\n\
                  - apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: q}\n  \
                  spec: *s\n";
        assert_eq!(load_one("a.yaml", ok).expect("aliases").pools.len(), 2);
    }

    #[test]
    fn json_by_extension_or_content_and_yaml_flow_style_stays_yaml() {
        assert_eq!(format_of("x.json", "a: 1"), Format::Json);
        assert_eq!(
            format_of("paste.txt", "\n  {\"kind\": \"List\"}"),
            Format::Json
        );
        assert_eq!(format_of("x.yaml", "kind: List"), Format::Yaml);
        let flow = "{apiVersion: projectcalico.org/v3, kind: IPPool, metadata: {name: p}, \
                    spec: {cidr: 10.0.0.0/16}}";
        assert_eq!(load_one("flow.yaml", flow).expect("yaml").pools.len(), 1);
        let err = load_one("flow.json", flow).expect_err("not JSON");
        assert!(
            err.to_string()
                .starts_with("flow.json: not valid JSON: key must be a string at line 1"),
            "{err}"
        );
    }

    #[test]
    fn json_lists_take_their_kind_concatenate_and_name_a_bad_object() {
        // kubectl prints keys in order: items before kind.
        let list = r#"{"apiVersion": "projectcalico.org/v3", "items": [
            {"metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16"}}],
            "kind": "IPPoolList", "metadata": {}}
            {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
             "metadata": {"name": "q"}, "spec": {"cidr": "10.1.0.0/16"}}"#;
        let ds = load_one("pools.json", list).expect("two documents");
        assert_eq!(
            ds.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["p", "q"]
        );
        let bad = list.replace("10.1.0.0/16", "10.1.0.0/33");
        assert_eq!(
            load_one("pools.json", &bad).expect_err("bad").to_string(),
            "pools.json: IPPool q: field spec.cidr: \"10.1.0.0/33\" is not a CIDR"
        );
        // A field that fails while a List's item is read into its type names the item, and
        // the parser adds where it is.
        let typed = r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion":
            "crd.projectcalico.org/v1", "kind": "IPAMBlock", "metadata": {"name": "b1"},
            "spec": {"cidr": "10.0.0.0/26", "allocations": [0, "x"]}}]}"#;
        assert_eq!(
            load_one("blocks.json", typed).expect_err("bad").to_string(),
            "blocks.json: IPAMBlock b1: field spec.allocations[1]: got the text \"x\", \
             expected a whole number from 0 to 4294967295 at line 3 column 66"
        );
        let truncated = &list[..list.len() / 2];
        let err = load_one("pools.json", truncated).expect_err("truncated");
        assert!(
            err.to_string()
                .starts_with("pools.json: not valid JSON: EOF while parsing"),
            "{err}"
        );
    }
}
