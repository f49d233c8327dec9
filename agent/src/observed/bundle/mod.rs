//! Captured text dumps (`ip -d route show table all`, `ip -d link`, `bridge fdb`,
//! `iptables-save`, `nft list ruleset`, …) parsed into the same [`super::ObservedDataplane`]
//! that live reads produce, so that every check runs offline too.
//!
//! A bundle is a directory: ours (written by [`capture`]), an extracted `calicoctl node diags`
//! archive, or whatever an operator pasted into files. Files are recognised by what they contain
//! ([`classify`]), a file holding several pasted command outputs is split at its shell prompts
//! ([`sections`]), and each part goes through the parser for its format. What pasting adds
//! (code fences, quote markers, indentation, wrapped lines) is undone first
//! ([`paste_quoting`]); parts of a ruleset (`-A` lines without their table, an `iptables -L`
//! listing, nft text without its `table` line) are read as fragments: evidence of what is
//! there, never of what is not. Nothing in a bundle
//! is trusted to be complete or well-formed: what cannot be read becomes a note, what is
//! missing is listed in `unavailable`.

mod assemble;
pub mod calicoctl_status;
mod capture;
pub mod classify;
pub mod fdb;
mod iproute_names;
pub mod iptables_dump;
pub mod iptables_fragment;
pub mod iptables_listing;
mod iptables_table_inference;
pub mod link;
pub mod neigh;
pub mod nft_text;
#[cfg(test)]
mod paste_corpus;
pub mod paste_quoting;
pub mod route;
pub mod rule;
pub mod sections;
pub mod sysctl_text;
mod walk;

use std::path::PathBuf;

use serde::Serialize;

pub use capture::capture;
pub use classify::Format;
pub use walk::read_dir;

use super::ObservedDataplane;

/// A bundle read back: the snapshot, plus what was found where and what could not be used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bundle {
    pub observed: ObservedDataplane,
    /// Calico resources (`projectcalico.org/v3`, `crd.projectcalico.org/v1`) found in the
    /// bundle; they describe the desired state and are left to the datastore reader.
    pub datastore_files: Vec<PathBuf>,
    /// Every file (or pasted section of one) that was parsed, with its format's name.
    pub recognised: Vec<(PathBuf, String)>,
    /// Lines that could not be parsed (`file:line: why`), files that were skipped, and anything
    /// else a reader of the analysis should know about the input.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("could not read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A line a parser could not use (or used with a caveat), numbered from 1 within the text the
/// parser was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineNote {
    pub line: usize,
    pub message: String,
}

impl LineNote {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
        }
    }
}

/// What a line-oriented parser returns: the items it understood and notes on the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parsed<T> {
    pub items: Vec<T>,
    pub notes: Vec<LineNote>,
}

impl<T> Default for Parsed<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            notes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Whatever the input, no parser panics: every fixture cut at every length, and random
    //! text built from the words the parsers look for.

    use super::*;

    const FIXTURES: &[&str] = &[
        include_str!("testdata/ip-d-route-show-table-all-types.txt"),
        include_str!("testdata/ip-d-link-show-kinds.txt"),
        include_str!("testdata/ip-addr.txt"),
        include_str!("testdata/ip-neigh-nud-all.txt"),
        include_str!("testdata/bridge-fdb-bridge.txt"),
        include_str!("testdata/ip-rule-kinds.txt"),
        include_str!("testdata/iptables-nft-save-c.txt"),
        include_str!("testdata/nft-calico-n-a.txt"),
        include_str!("testdata/sysctl.txt"),
        include_str!("testdata/wg-show-all-dump.txt"),
        include_str!("testdata/pasted/session.txt"),
    ];

    fn every_parser(text: &str) {
        let _ = classify::from_content(text);
        let _ = sections::split(text);
        let _ = route::parse(text, None);
        let _ = route::parse(text, Some(6));
        let _ = link::parse(text);
        let _ = neigh::parse(text);
        let _ = fdb::parse(text);
        let _ = rule::parse(text, None);
        let _ = nft_text::parse(text);
        let _ = sysctl_text::parse(text);
        let _ = iptables_dump::parse(text, None, None);
        for line in text.lines() {
            let _ = classify::from_command(line);
            let _ = sections::prompt_command(line);
        }
    }

    #[test]
    fn truncated_fixtures_never_panic() {
        for fixture in FIXTURES {
            let cuts = fixture
                .char_indices()
                .map(|(i, _)| i)
                .filter(|i| i % 61 == 0);
            for cut in cuts {
                every_parser(&fixture[..cut]);
            }
        }
    }

    #[test]
    fn random_words_never_panic() {
        const WORDS: &[&str] = &[
            "1:",
            "lo:",
            "<UP>",
            "<",
            ">",
            "mtu",
            "state",
            "UP",
            "link/ether",
            "link/none",
            "vxlan",
            "id",
            "dev",
            "via",
            "inet",
            "inet6",
            "peer",
            "default",
            "blackhole",
            "10.0.0.1",
            "10.0.0.0/8",
            "fe80::1",
            "::/0",
            "/",
            "table",
            "proto",
            "scope",
            "metric",
            "lladdr",
            "PERMANENT",
            "00:11:22:33:44:55",
            "master",
            "self",
            "permanent",
            "from",
            "fwmark",
            "0x1/0x2",
            "lookup",
            "not",
            "table",
            "chain",
            "set",
            "map",
            "{",
            "}",
            ";",
            "type",
            "hook",
            "priority",
            "srcnat",
            "+",
            "-",
            "policy",
            "elements",
            "=",
            ",",
            "counter",
            "packets",
            "bytes",
            "jump",
            "goto",
            "meta",
            "mark",
            "&",
            "fib",
            ".",
            "\"q",
            "\"",
            "#",
            "handle",
            "*filter",
            ":INPUT",
            "-A",
            "COMMIT",
            "[1:2]",
            "$",
            "==>",
            "<==",
            "root@h:~#",
            "net.ipv4.conf.x/y.rp_filter",
            "\t",
            "@if3",
            "@",
            "é",
            "\u{0}",
        ];
        // xorshift: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..(next() % 40) {
                let w = WORDS[(next() % WORDS.len() as u64) as usize];
                text.push_str(w);
                text.push(match next() % 5 {
                    0 => '\n',
                    1 => '\t',
                    _ => ' ',
                });
            }
            every_parser(&text);
        }
    }
}
