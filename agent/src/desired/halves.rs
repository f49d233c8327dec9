//! A large List cut in two at an item boundary near its middle, so that two threads can read
//! it: at 5,000 nodes `kubectl get ipamblocks` is tens of megabytes, and reading it is most
//! of a one-shot check's time.
//!
//! The first half is the original text truncated after an item and closed; the second is the
//! rest of the items under a head of its own, followed by what followed them (the List's
//! `kind`). Both are whole documents of the same format. The cut is made only where the
//! printers' layout makes it certain: YAML's items at column 0 under `items:`, pretty-printed
//! JSON's items at one indentation; otherwise the text is not cut.

use memchr::memmem;

use super::document::Format;

/// The second half's head, and the first half's tail, per format.
fn head(format: Format) -> &'static str {
    match format {
        Format::Yaml => "items:\n",
        Format::Json => "{\"items\": [",
    }
}

fn tail(format: Format) -> &'static str {
    match format {
        Format::Yaml => "",
        Format::Json => "]}",
    }
}

/// The text cut in two documents.
pub struct Halves {
    pub first: String,
    pub second: String,
    format: Format,
    /// Where the first half ends in the original text (before its tail).
    first_len: usize,
    /// What the cut removed between the halves (JSON's `,` and whitespace).
    between: String,
}

impl Halves {
    /// Cuts `text`, or gives it back when its layout does not allow a certain cut.
    pub fn cut(mut text: String, format: Format) -> Result<Self, String> {
        let cut = match format {
            Format::Yaml => yaml_cut(&text),
            Format::Json => json_cut(&text),
        };
        let Some((first_end, second_start)) = cut else {
            return Err(text);
        };
        let mut second = String::with_capacity(text.len() - second_start + 16);
        second.push_str(head(format));
        second.push_str(&text[second_start..]);
        let between = text[first_end..second_start].to_string();
        text.truncate(first_end);
        text.push_str(tail(format));
        text.shrink_to_fit();
        Ok(Self {
            first: text,
            second,
            format,
            first_len: first_end,
            between,
        })
    }

    /// The original text again, for the reader that takes it whole.
    pub fn join(self) -> String {
        let Self {
            mut first,
            second,
            format,
            first_len,
            between,
        } = self;
        first.truncate(first_len);
        first.push_str(&between);
        first.push_str(&second[head(format).len()..]);
        first
    }
}

/// YAML as kubectl and calicoctl print a List: `items:` at column 0, its entries `- ` at
/// column 0, and nothing else at column 0 until the cut.
fn yaml_cut(text: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let items = if text.starts_with("items:\n") {
        0
    } else {
        memmem::find(b, b"\nitems:\n")? + 1
    };
    let first = items + "items:\n".len();
    if !text[first..].starts_with("- ") {
        return None;
    }
    let mid = text.len() / 2;
    if mid <= first {
        return None;
    }
    let cut = mid + memmem::find(&b[mid..], b"\n- ")? + 1;
    // Every line up to the cut continues the items: an entry, an indented line, a blank line
    // or a comment; a document marker or another key at column 0 would end them.
    let inside = memchr::memchr_iter(b'\n', &b[first..cut - 1]).all(|i| {
        let at = first + i + 1;
        match b.get(at) {
            Some(b' ' | b'\n' | b'#') => true,
            Some(b'-') => matches!(b.get(at + 1), Some(b' ' | b'\n')),
            _ => false,
        }
    });
    inside.then_some((cut, cut))
}

/// Pretty-printed JSON (kubectl's, calicoctl's): the first item's `{` opens a line of its own
/// under `"items": [`, and an item boundary is `}` and `,{` on lines of that indentation.
fn json_cut(text: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let near_start = &b[..b.len().min(4096)];
    let key = memmem::find(near_start, b"\"items\"")? + "\"items\"".len();
    let open = key + text[key..].find('{')?;
    if !text[key..open]
        .bytes()
        .all(|c| c.is_ascii_whitespace() || c == b':' || c == b'[')
        || text[key..open].matches('[').count() != 1
    {
        return None;
    }
    let line = text[..open].rfind('\n')? + 1;
    let indent = &text[line..open];
    if !indent.bytes().all(|c| c == b' ') {
        return None;
    }
    let boundary = format!("\n{indent}}},\n{indent}{{");
    let mid = text.len() / 2;
    if mid <= open {
        return None;
    }
    let at = mid + memmem::find(&b[mid..], boundary.as_bytes())?;
    let first_end = at + 1 + indent.len() + 1;
    let second_start = at + boundary.len() - 1;
    Some((first_end, second_start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use xtask::cluster::{Cluster, Format as Printed};

    fn ipam(format: Printed) -> String {
        Cluster::new(50)
            .datastore(format)
            .into_iter()
            .find(|(name, _)| name.contains("ipam"))
            .map(|(_, text)| text)
            .expect("the IPAM file")
    }

    fn values(text: &str, format: Format) -> serde_json::Value {
        match format {
            Format::Json => serde_json::from_str(text).expect("JSON"),
            Format::Yaml => serde_saphyr::from_str(text).expect("YAML"),
        }
    }

    #[test]
    fn both_halves_are_documents_with_the_items_in_order_and_join_back() {
        for (printed, format) in [(Printed::Yaml, Format::Yaml), (Printed::Json, Format::Json)] {
            let text = ipam(printed);
            let whole = values(&text, format);
            let halves =
                Halves::cut(text.clone(), format).unwrap_or_else(|_| panic!("{format:?} cut"));
            let (a, b) = (
                values(&halves.first, format),
                values(&halves.second, format),
            );
            let items = |v: &serde_json::Value| v["items"].as_array().cloned().unwrap_or_default();
            let (ia, ib) = (items(&a), items(&b));
            assert!(
                ia.len() > 10 && ib.len() > 10,
                "{format:?}: {} / {}",
                ia.len(),
                ib.len()
            );
            assert_eq!([ia, ib].concat(), items(&whole), "{format:?}");
            assert_eq!(b["kind"], whole["kind"], "{format:?}");
            assert_eq!(halves.join(), text, "{format:?}");
        }
    }

    #[test]
    fn layouts_that_do_not_make_the_cut_certain_are_not_cut() {
        let item = "- a: 1\n  b: 2\n";
        let yaml = format!("apiVersion: v1\nitems:\n{}kind: List\n", item.repeat(100));
        assert!(Halves::cut(yaml.clone(), Format::Yaml).is_ok());
        // Another key at column 0 before the middle: the items ended there.
        let ended = format!("items:\n{}other: x\n{}", item.repeat(10), item.repeat(100));
        assert!(Halves::cut(ended, Format::Yaml).is_err());
        let documents = format!("items:\n{}---\n{}", item.repeat(10), item.repeat(100));
        assert!(Halves::cut(documents, Format::Yaml).is_err());
        // JSON on one line, or with its items sharing lines, has no certain boundary.
        let compact = format!("{{\"items\": [{}{{}}]}}", "{\"a\": 1},".repeat(100));
        assert!(Halves::cut(compact, Format::Json).is_err());
    }
}
