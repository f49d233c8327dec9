//! Reading a bundle directory: every file below it, recursively, each split into sections and
//! each section recognised and handed to the assembler.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use super::{
    Bundle, BundleError,
    assemble::Assembler,
    classify::{self, Format, Origin},
    paste_quoting,
    sections::{self, Section},
};

/// Directories nested deeper than this are not entered.
const MAX_DEPTH: usize = 16;
/// Larger files are skipped: no dump of this kind is this big, logs can be.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// How much of a file is looked at to tell a dump from binary data or a log.
const HEAD_BYTES: u64 = 64 * 1024;

/// Reads every file below `dir` into one [`Bundle`].
///
/// Only a missing or unreadable `dir` is an error; anything wrong inside it (unreadable,
/// binary or unrecognised files, bad lines) becomes a note.
pub fn read_dir(dir: &Path) -> Result<Bundle, BundleError> {
    let meta = fs::metadata(dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => BundleError::NotFound {
            path: dir.to_path_buf(),
        },
        _ => BundleError::Read {
            path: dir.to_path_buf(),
            source,
        },
    })?;
    if !meta.is_dir() {
        return Err(BundleError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mut asm = Assembler::default();
    let mut files = Vec::new();
    let top = fs::read_dir(dir).map_err(|source| BundleError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    collect(dir, top, 0, &mut files, &mut asm);
    for path in files {
        read_file(dir, &path, &mut asm);
    }
    Ok(asm.finish())
}

/// Files below `dir`, sorted so that the result does not depend on directory order.
fn collect(
    root: &Path,
    entries: fs::ReadDir,
    depth: usize,
    files: &mut Vec<PathBuf>,
    asm: &mut Assembler,
) {
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        // Symlinks are not followed: a bundle from elsewhere could point them at any file on
        // this host, and a symlinked directory could loop.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_symlink() {
            asm.note(format!(
                "{}: a symlink, not followed",
                relative(root, &path)
            ));
            continue;
        }
        if meta.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                asm.note(format!(
                    "{}: nested too deep, not read",
                    relative(root, &path)
                ));
                continue;
            }
            match fs::read_dir(&path) {
                Ok(sub) => collect(root, sub, depth + 1, files, asm),
                Err(e) => asm.note(format!("{}: not read: {e}", relative(root, &path))),
            }
        } else if meta.is_file() {
            files.push(path);
        }
    }
}

fn read_file(root: &Path, path: &Path, asm: &mut Assembler) {
    let shown = relative(root, path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_archive(&name) {
        asm.note(format!(
            "{shown}: an archive; extract it into the bundle directory to read it"
        ));
        return;
    }
    let by_name = classify::from_file_name(&name);
    let text = match read_contents(path, by_name.is_some()) {
        Ok(Contents::Text(text)) => text,
        Ok(Contents::Binary) => {
            asm.note(format!("{shown}: binary, not read"));
            return;
        }
        Ok(Contents::TooLarge) => {
            asm.note(format!(
                "{shown}: larger than {} MiB, not read",
                MAX_FILE_BYTES / 1024 / 1024
            ));
            return;
        }
        Ok(Contents::NotADump) => {
            asm.note(format!("{shown}:1: not a dataplane dump; ignored"));
            return;
        }
        Err(e) => {
            asm.note(format!("{shown}: not read: {e}"));
            return;
        }
    };
    let mtime = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let unquoted = paste_quoting::unquote(&text);
    let mut undone = Vec::new();
    if unquoted.fences > 0 {
        undone.push(format!(
            "{} Markdown code fence line(s) ignored",
            unquoted.fences
        ));
    }
    if unquoted.quoted > 0 {
        undone.push(format!(
            "{} line(s) read without their quote marker (`>`, `#`, `|`)",
            unquoted.quoted
        ));
    }
    if !undone.is_empty() {
        asm.note(format!("{shown}: pasted text: {}", undone.join(", ")));
    }
    // A paste indented as a whole (a Markdown list item, a code block) has its prompts
    // indented too.
    let sections = sections::split(&paste_quoting::dedent(&unquoted.text));
    if sections.is_empty() {
        // An empty file still says something when its name does: an empty
        // `iptables-legacy-save` means no legacy tables, not a missing source.
        match by_name {
            Some(origin) => asm.add(path, &shown, &Section::whole(""), origin, mtime),
            None => asm.note(format!("{shown}: empty")),
        }
        return;
    }
    let single = sections.len() == 1;
    for section in &sections {
        let hint = section
            .command
            .as_deref()
            .and_then(classify::from_command)
            .or_else(|| section.label.as_deref().and_then(label_origin))
            .or(if single { by_name } else { None });
        match decide(&section.text, hint) {
            Decision::Parse(origin, conflict) => {
                if let Some(named) = conflict {
                    asm.note(format!(
                        "{shown}:{}: looks like {} although named as {}; read as what it looks like",
                        section.first_line,
                        origin.format.name(),
                        named.name()
                    ));
                }
                asm.add(path, &shown, section, origin, mtime);
            }
            Decision::Unknown => {
                let what = section
                    .command
                    .as_deref()
                    .map_or_else(String::new, |c| format!(" (output of `{c}`)"));
                asm.note(format!(
                    "{shown}:{}: not a dataplane dump{what}; ignored",
                    section.first_line
                ));
            }
        }
    }
}

enum Decision {
    /// Parse as `Origin`; the format the name or command suggested, if content disagreed.
    Parse(Origin, Option<Format>),
    Unknown,
}

/// Content first; the command or name decides when the content alone cannot (empty output,
/// or text such as a hostname that has no signature), and supplies the family and backend.
fn decide(text: &str, hint: Option<Origin>) -> Decision {
    let by_content = classify::from_content(text);
    match (by_content, hint) {
        // The command knows better whether blocks came from `ip addr` or `ip link`.
        (Some(f), Some(h)) if f == h.format || compatible(f, h.format) => Decision::Parse(h, None),
        (Some(f), Some(h)) => Decision::Parse(
            Origin {
                format: f,
                family: None,
                backend: None,
                table: None,
            },
            Some(h.format),
        ),
        (Some(f), None) => Decision::Parse(
            Origin {
                format: f,
                family: None,
                backend: None,
                table: None,
            },
            None,
        ),
        (None, Some(h)) => Decision::Parse(h, None),
        (None, None) => Decision::Unknown,
    }
}

/// `ip addr` and `ip link` print the same blocks; either name fits either content. An
/// `iptables-save` cut or grepped down to its rules is still iptables-save output, and the
/// command knows its family and backend.
fn compatible(a: Format, b: Format) -> bool {
    matches!(
        (a, b),
        (Format::IpLink, Format::IpAddr)
            | (Format::IpAddr, Format::IpLink)
            | (Format::IptablesFragment, Format::IptablesSave)
    )
}

/// A `==> name <==` label is a file name, possibly with a directory.
fn label_origin(label: &str) -> Option<Origin> {
    label.rsplit('/').next().and_then(classify::from_file_name)
}

fn is_archive(name: &str) -> bool {
    [".gz", ".tgz", ".tar", ".zip", ".xz", ".bz2", ".zst"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

enum Contents {
    Text(String),
    Binary,
    TooLarge,
    /// Its first bytes match no format, prompt or header: a log, most likely.
    NotADump,
}

/// The file as text. Its first bytes decide whether the rest is worth reading, so that logs
/// in a `calicoctl node diags` archive are not read whole. Invalid UTF-8 is replaced, not
/// rejected: a dump with one odd byte is still worth reading.
fn read_contents(path: &Path, name_known: bool) -> std::io::Result<Contents> {
    let mut file = fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::new();
    (&mut file).take(HEAD_BYTES).read_to_end(&mut bytes)?;
    if bytes.contains(&0) {
        return Ok(Contents::Binary);
    }
    if !bytes.is_empty() && !name_known && !worth_reading(&String::from_utf8_lossy(&bytes)) {
        return Ok(Contents::NotADump);
    }
    if len > MAX_FILE_BYTES {
        return Ok(Contents::TooLarge);
    }
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
    // Pasted on Windows: drop the CRs so that they do not end up in names.
    Ok(Contents::Text(
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n"),
    ))
}

/// Whether the start of a file looks like a dump, a pasted session or Calico resources.
fn worth_reading(head: &str) -> bool {
    let head = paste_quoting::dedent(&paste_quoting::unquote(&head.replace("\r\n", "\n")).text);
    classify::from_content(&head).is_some()
        || head
            .lines()
            .any(|l| sections::prompt_command(l).is_some() || l.trim_start().starts_with("==> "))
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observed::iptables::Backend;

    fn testdata(dir: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/observed/bundle/testdata")
            .join(dir)
    }

    /// What a bundle was made of, with paths relative to it (the rest is in other snapshots).
    #[derive(serde::Serialize)]
    struct Summary {
        node_name: String,
        recognised: Vec<(String, String)>,
        datastore_files: Vec<String>,
        notes: Vec<String>,
        unavailable: Vec<(String, String)>,
        counts: Vec<(&'static str, usize)>,
    }

    fn summary(root: &Path, b: &Bundle) -> Summary {
        let rel = |p: &Path| relative(root, p);
        let o = &b.observed;
        Summary {
            node_name: o.node_name.clone(),
            recognised: b
                .recognised
                .iter()
                .map(|(p, f)| (rel(p), f.clone()))
                .collect(),
            datastore_files: b.datastore_files.iter().map(|p| rel(p)).collect(),
            notes: b.notes.clone(),
            unavailable: o
                .unavailable
                .iter()
                .map(|u| (u.source.clone(), u.reason.clone()))
                .collect(),
            counts: vec![
                ("links", o.links.len()),
                ("addresses", o.addresses.len()),
                ("routes", o.routes.len()),
                ("neighbours", o.neighbours.len()),
                ("fdb", o.fdb.len()),
                ("rules", o.rules.len()),
                ("iptables dumps", o.iptables.len()),
                ("nft rules", o.nft.as_ref().map_or(0, |n| n.rules.len())),
                ("wireguard devices", o.wireguard.len()),
            ],
        }
    }

    #[test]
    fn our_own_capture_reads_back_complete() {
        let root = testdata("capture-lab");
        let b = read_dir(&root).expect("fixture bundle");
        assert!(b.notes.is_empty(), "{:#?}", b.notes);
        // Live services (Felix health, BIRD, conntrack) are never part of a captured bundle.
        let missing: Vec<_> = b
            .observed
            .unavailable
            .iter()
            .filter(|u| !u.kind.live_service())
            .collect();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(b.observed.node_name, "node-a");
        assert!(b.observed.captured_at > 0);
        // Empty dumps of the other backends and family are sources read, not missing ones.
        let labels: Vec<String> = b.observed.iptables.iter().map(|d| d.label()).collect();
        assert_eq!(
            labels,
            [
                "iptables-legacy",
                "iptables-nft",
                "ip6tables-legacy",
                "ip6tables-nft"
            ]
        );
        // Names resolved to indexes across files.
        let vx = b.observed.link("vxlan.calico").expect("vxlan.calico");
        let eth0 = b.observed.link("eth0").expect("eth0");
        assert_eq!(
            vx.vxlan.as_ref().and_then(|v| v.parent_index),
            Some(eth0.index)
        );
        let remote = b
            .observed
            .routes
            .iter()
            .find(|r| r.dev.as_deref() == Some("vxlan.calico") && r.onlink)
            .expect("remote block route");
        assert_eq!(remote.oif, Some(vx.index));
        assert!(b.observed.fdb.iter().all(|e| e.ifindex != 0));
        // IPv6 routes appear in both route files, once in the snapshot.
        let v6 = b
            .observed
            .routes
            .iter()
            .filter(|r| r.destination.addr().is_ipv6());
        let v6_file = include_str!("testdata/capture-lab/ip-6-d-route-show-table-all.txt");
        assert_eq!(v6.count(), v6_file.lines().count());
        let mut observed = b.observed.clone();
        observed.iptables.clear();
        observed.nft = None;
        insta::assert_yaml_snapshot!(observed, { ".captured_at" => "[mtime]" });
    }

    #[test]
    fn calicoctl_node_diags_archive() {
        let root = testdata("calicoctl-diags");
        let b = read_dir(&root).expect("fixture bundle");
        assert_eq!(b.observed.node_name, "node-a");
        let v4 = b
            .observed
            .iptables
            .iter()
            .find(|d| d.family == 4)
            .expect("ipv4_tables");
        assert_eq!(v4.backend, Some(Backend::Nft));
        assert!(v4.felix_chain_count() > 0);
        let v6 = b
            .observed
            .iptables
            .iter()
            .find(|d| d.family == 6)
            .expect("ipv6_tables");
        assert!(v6.tables.is_empty());
        // `nft -n -a list ruleset` with nft's warnings mixed in (CombinedOutput).
        let nft = b.observed.nft.as_ref().expect("nft_ruleset");
        assert!(nft.errors.is_empty(), "{:?}", nft.errors);
        assert!(nft.rules.iter().all(|r| r.handle.is_some()));
        insta::assert_yaml_snapshot!(summary(&root, &b));
    }

    #[test]
    fn pasted_session_and_calico_yaml() {
        let root = testdata("pasted");
        let b = read_dir(&root).expect("fixture bundle");
        assert_eq!(b.observed.node_name, "node-a");
        assert_eq!(b.datastore_files, [root.join("calico-pools.yaml")]);
        // `bridge fdb show | grep vxlan` kept one line; `ip -6 rule` was labelled IPv6.
        assert_eq!(b.observed.fdb.len(), 1);
        assert_eq!(b.observed.rules.iter().filter(|r| r.family == 6).count(), 2);
        assert_eq!(b.observed.sysctls.rp_filter.get("vxlan.calico"), Some(&0));
        insta::assert_yaml_snapshot!(summary(&root, &b));
    }

    #[test]
    fn garbage_directory_yields_notes_not_errors() {
        let root = std::env::temp_dir().join(format!("cdpa-bundle-garbage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let nested = root.join("a/b/c");
        fs::create_dir_all(&nested).expect("mkdir");
        fs::write(root.join("binary.bin"), [0u8, 159, 146, 150, 0, 1]).expect("write");
        let log = "2026-11-23 18:40:01.123 [INFO][61] felix/int_dataplane.go 1953: applied\n";
        fs::write(root.join("felix.log"), log.repeat(20_000)).expect("write");
        fs::write(root.join("empty"), "").expect("write");
        fs::write(root.join("diags.tar.gz"), "not really").expect("write");
        fs::write(nested.join("notes.txt"), "nothing to see\nhere at all\n").expect("write");
        fs::write(
            nested.join("routes"),
            "10.0.0.0/8 dev eth0\n\u{fffd}\u{0301} dev\n",
        )
        .expect("write");
        fs::write(root.join("hostname"), "node with spaces\n").expect("write");
        std::os::unix::fs::symlink("/etc/hostname", root.join("link-to-host-file"))
            .expect("symlink");
        let b = read_dir(&root).expect("a directory of junk is still a bundle");
        fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(b.observed.routes.len(), 1);
        assert_eq!(b.observed.node_name, "");
        insta::assert_yaml_snapshot!(summary(&root, &b));
    }

    #[test]
    fn wireguard_dump_is_read_and_required_only_with_a_wireguard_link() {
        let root = std::env::temp_dir().join(format!("cdpa-bundle-wg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("mkdir");
        let link = "7: wireguard.cali: <POINTOPOINT,NOARP,UP,LOWER_UP> mtu 1440 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\n    link/none  promiscuity 0 allmulti 0 minmtu 0 maxmtu 2147483552\n    wireguard addrgenmode none numtxqueues 1\n";
        fs::write(root.join("links"), link).expect("write");
        let without_dump = read_dir(&root).expect("bundle");
        let missing: Vec<&str> = without_dump
            .observed
            .unavailable
            .iter()
            .map(|u| u.source.as_str())
            .collect();
        assert!(missing.contains(&"wg show all dump"), "{missing:?}");

        let dump = include_str!("testdata/wg-show-all-dump.txt");
        fs::write(root.join("wg"), dump).expect("write");
        let with_dump = read_dir(&root).expect("bundle");
        fs::remove_dir_all(&root).expect("cleanup");
        let wg = &with_dump.observed.wireguard;
        assert_eq!(wg.len(), 1);
        assert_eq!(wg[0].peers.len(), 2);
        assert_eq!(wg[0].listen_port, Some(51820));
        let private_key = dump.split('\t').nth(1).unwrap_or_default();
        assert!(!format!("{with_dump:?}").contains(private_key));
        assert!(
            !with_dump
                .observed
                .unavailable
                .iter()
                .any(|u| u.source == "wg show all dump")
        );
        assert_eq!(
            with_dump
                .observed
                .link("wireguard.cali")
                .and_then(|l| l.kind.as_deref()),
            Some("wireguard")
        );
    }

    #[test]
    fn missing_or_non_directory_paths_are_errors() {
        let missing = Path::new("/nonexistent/cdpa-bundle");
        let err = read_dir(missing).expect_err("missing");
        assert!(matches!(err, BundleError::NotFound { .. }));
        assert!(
            err.to_string().contains("/nonexistent/cdpa-bundle"),
            "{err}"
        );
        let file = testdata("ip-route.txt");
        let err = read_dir(&file).expect_err("a file");
        assert!(matches!(err, BundleError::NotADirectory { .. }));
        assert!(err.to_string().contains("ip-route.txt"), "{err}");
    }
}
