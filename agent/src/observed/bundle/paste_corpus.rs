//! The corpus of real pastes from public Calico, calicoctl and kops-era issue threads
//! (`testdata/pastes/*/README.md` cites each thread and says what it should read as): each
//! is read as a bundle and analysed as `agent diag --bundle` does; and the corpus, mutated
//! the ways pasting mangles text, never makes a reader panic.

use std::path::{Path, PathBuf};

use super::{Bundle, read_dir};
use crate::{
    analysis::{self, Analysis},
    report::diag_text,
    verify::{CheckId, Policy},
};

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/observed/bundle/testdata/pastes")
        .join(name)
}

/// The analysis `agent diag --bundle` makes, with the INPUT lines as the pipeline builds them.
fn analyse(name: &str) -> (Bundle, Analysis) {
    let root = corpus_dir(name);
    let b = read_dir(&root).expect("corpus bundle");
    let mut a = analysis::analyse(&b.observed, None, &Policy::default());
    a.input_notes = b
        .recognised
        .iter()
        .map(|(p, f)| {
            let rel = p.strip_prefix(&root).unwrap_or(p);
            format!("read {} as {f}", rel.display())
        })
        .chain(b.notes.iter().cloned())
        .collect();
    (b, a)
}

fn findings(a: &Analysis) -> Vec<(CheckId, String)> {
    a.verification
        .iter()
        .flat_map(|v| &v.findings)
        .map(|f| (f.check, f.subject.clone()))
        .collect()
}

fn skip_reason(a: &Analysis, check: CheckId) -> Option<String> {
    a.verification
        .as_ref()?
        .skipped
        .iter()
        .find(|s| s.check == check)
        .map(|s| s.reason.clone())
}

fn input(a: &Analysis) -> String {
    a.input_notes.join("\n")
}

fn clean(a: &Analysis) {
    let v = a.verification.as_ref().expect("Calico found, verified");
    assert!(v.findings.is_empty(), "{:?}", findings(a));
}

/// Every corpus entry says where it came from and what it should read as.
#[test]
fn every_paste_cites_its_thread() {
    let dir = corpus_dir("");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus").flatten() {
        let readme = std::fs::read_to_string(entry.path().join("README.md")).unwrap_or_default();
        assert!(readme.contains("https://github.com/"), "{:?}", entry.path());
        assert!(readme.contains("Expected reading"), "{:?}", entry.path());
        assert!(readme.contains("Expected verdict"), "{:?}", entry.path());
        n += 1;
    }
    assert!(n >= 12, "{n}");
}

#[test]
fn calicoctl_status_with_a_peer_in_active_is_a_down_session() {
    let (b, a) = analyse("calicoctl-status-active-wrapped");
    let peers = b.observed.bgp_peers.as_ref().expect("sessions");
    assert_eq!(peers[0].info, "Active Socket: Connection refused");
    assert_eq!(
        findings(&a),
        [(CheckId::BgpSessionDown, "192.168.63.204".to_string())]
    );
    let f = &a.verification.as_ref().expect("verified").findings[0];
    assert!(f.expected.contains("Mesh_192_168_63_204"), "{}", f.expected);
    // As `agent diag` prints it: the finding, and the INPUT section saying how it was read.
    let text = diag_text::text(&a);
    // Wrapped at 80 columns: read as the words it says.
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        flat.contains(
            "INPUT read issue-body.txt as calicoctl node status (1 BGP peer(s), 1 not Established)"
        ),
        "{text}"
    );
    assert!(
        a.diag
            .evidence
            .iter()
            .any(|e| e.contains("node-to-node mesh"))
    );
}

#[test]
fn calicoctl_status_without_bird_is_no_session_finding() {
    let (b, a) = analyse("calicoctl-status-bird-socket-error");
    assert!(b.observed.bgp_peers.is_none());
    let bgp = b
        .observed
        .unavailable
        .iter()
        .find(|u| u.kind == crate::observed::Source::Bgp)
        .expect("BGP not observable");
    assert!(bgp.reason.contains("Error querying BIRD"), "{}", bgp.reason);
    assert!(findings(&a).is_empty());
    assert!(input(&a).contains("BIRD did not answer"));
}

#[test]
fn calicoctl_status_established_is_quiet() {
    let (b, a) = analyse("calicoctl-status-established-two-nodes");
    assert_eq!(b.observed.bgp_peers.as_ref().map(Vec::len), Some(2));
    clean(&a);
    assert!(skip_reason(&a, CheckId::BgpSessionDown).is_none());
}

/// calicoctl's "IPv6 BGP status" section is bird6's: its peers (none) or its error, apart from
/// bird's.
#[test]
fn calicoctl_status_ipv6_section_is_bird6s() {
    let (b, a) = analyse("calicoctl-status-established-two-nodes");
    assert_eq!(b.observed.bgp6_peers.as_ref().map(Vec::len), Some(0));
    clean(&a);
    let (b, _) = analyse("calicoctl-status-bird-socket-error");
    assert!(b.observed.bgp6_peers.is_none());
    let bgp6 = b
        .observed
        .unavailable
        .iter()
        .find(|u| u.kind == crate::observed::Source::Bgp6)
        .expect("bird6 not observable");
    assert!(bgp6.reason.contains("BIRDv6 socket"), "{}", bgp6.reason);
    let bgp = b
        .observed
        .unavailable
        .iter()
        .find(|u| u.kind == crate::observed::Source::Bgp)
        .expect("bird not observable");
    assert!(!bgp.reason.contains("BIRDv6"), "{}", bgp.reason);
}

#[test]
fn headerless_rules_with_counters_are_a_filter_fragment() {
    let (b, a) = analyse("iptables-save-fragment-counters");
    let d = &b.observed.iptables[0];
    assert_eq!(d.tables.len(), 1);
    assert_eq!(d.tables[0].name, "filter");
    assert_eq!(d.tables[0].rules.len(), 11);
    clean(&a);
    let why = skip_reason(&a, CheckId::RulesFelixMissing).expect("not run");
    assert!(
        why.starts_with("not in the input: the rules are a fragment"),
        "{why}"
    );
    assert!(
        input(&a).contains("table filter: 11 rule(s), because cali-INPUT exists only in filter")
    );
}

#[test]
fn a_nat_listing_cut_at_both_ends_judges_the_hook_it_shows() {
    let (b, a) = analyse("iptables-nat-listing-cut");
    let d = &b.observed.iptables[0];
    assert_eq!(d.tables[0].name, "nat");
    clean(&a);
    // The hook it shows ran the check; nothing it does not show was reported.
    assert!(skip_reason(&a, CheckId::RulesFelixMissing).is_none());
    let text = input(&a);
    assert!(
        text.contains("because MASQUERADE/SNAT/DNAT targets mean nat"),
        "{text}"
    );
    assert!(
        text.contains("4 rule row(s) before the first `Chain` header"),
        "{text}"
    );
}

#[test]
fn an_indented_fenced_listing_with_a_mangled_comment() {
    let (b, a) = analyse("iptables-nat-outgoing-chain");
    let nat = b.observed.iptables[0].table("nat").expect("nat");
    let masq = nat.rules_of("cali-nat-outgoing").next().expect("rule");
    assert_eq!(masq.felix_hash(), Some("Dw4T8UWPnCLxRJiI"));
    assert!(masq.spec.contains("--match-set cali40masq-ipam-pools src"));
    clean(&a);
    assert!(skip_reason(&a, CheckId::RulesFelixMissing).is_some());
}

#[test]
fn listings_at_indented_prompts_merge_into_one_nat_fragment() {
    let (b, a) = analyse("iptables-L-line-numbers-prompts");
    assert_eq!(b.observed.iptables.len(), 1);
    let nat = b.observed.iptables[0].table("nat").expect("nat");
    let hook = nat.rules_of("POSTROUTING").next().expect("hook");
    assert_eq!(hook.felix_hash(), Some("O3lYWMrLQYEMJtB5"));
    clean(&a);
    let text = input(&a);
    assert!(text.contains("3 fragments merged into one"), "{text}");
    assert!(text.contains("named by the command"), "{text}");
}

#[test]
fn hash_quoted_save_in_two_windows() {
    let (b, a) = analyse("iptables-save-hash-quoted-two-windows");
    assert_eq!(b.observed.iptables.len(), 1);
    let d = &b.observed.iptables[0];
    let filter = d.table("filter").expect("filter");
    assert_eq!(filter.rules.len(), 17);
    assert_eq!(d.table("nat").map(|t| t.rules.len()), Some(2));
    clean(&a);
    assert!(input(&a).contains("2 fragments merged into one"));
    assert!(input(&a).contains("28 line(s) read without their quote marker"));
}

#[test]
fn pipe_prefixed_annotated_rules() {
    let (b, a) = analyse("iptables-pipes-prefixed-rules");
    let filter = b.observed.iptables[0].table("filter").expect("filter");
    assert_eq!(filter.rules_of("cali-forward-check").count(), 4);
    assert!(
        filter
            .rules_of("INPUT")
            .any(|r| r.target.as_deref() == Some("cali-INPUT"))
    );
    clean(&a);
}

#[test]
fn nft_text_without_its_table_line() {
    let (b, a) = analyse("nft-fragment-no-table-line");
    let nft = b.observed.nft.as_ref().expect("nft");
    assert!(nft.fragment.is_some());
    assert!(
        nft.chains
            .iter()
            .any(|c| c.table == "filter" && c.name == "OUTPUT")
    );
    assert!(
        nft.rules
            .iter()
            .any(|r| r.table == "nat" && r.target.as_deref() == Some("cali-PREROUTING"))
    );
    clean(&a);
    assert!(skip_reason(&a, CheckId::RulesFelixMissing).is_some());
    assert!(input(&a).contains("assigned to ip filter (its base chain says"));
}

#[test]
fn indented_ip_route_of_an_ipip_node() {
    let (b, a) = analyse("ip-route-indented-ipip");
    assert_eq!(b.observed.routes.len(), 25);
    assert!(a.diag.modes.contains(&crate::diag::Mode::Ipip));
    clean(&a);
}

#[test]
fn quoted_prompts_in_a_fenced_block() {
    let (b, a) = analyse("ip-addr-route-quoted-prompts");
    assert!(b.observed.link("vxlan.calico").is_some());
    assert_eq!(b.observed.routes.len(), 1);
    assert!(a.diag.modes.contains(&crate::diag::Mode::Vxlan));
    clean(&a);
    let text = input(&a);
    assert!(text.contains("read node2.txt as ip addr"), "{text}");
    assert!(text.contains("read node2.txt as ip route"), "{text}");
}

/// The corpus mangled the ways pasting does — cut, lines split, prompts and fences inserted,
/// bytes flipped — with a fixed seed and a bounded number of rounds: no reader panics.
#[test]
fn mutated_corpus_never_panics() {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(corpus_dir("")).expect("corpus").flatten() {
        for file in std::fs::read_dir(entry.path()).expect("entry").flatten() {
            if file.file_name() != "README.md" {
                texts.push(std::fs::read(file.path()).expect("paste"));
            }
        }
    }
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const INSERTS: &[&str] = &[
        "```\n",
        "$ iptables -t nat -L -n -v\n",
        "> ",
        "# ",
        "|",
        "\n",
        "Chain x (0 references)\n",
        "[1:2] ",
        "-A ",
        "table ip calico {\n",
        "}\n",
        "| 10.0.0.1 | global | start | x | Active |\n",
        "\t",
        "/* ",
        " */",
        "\"",
    ];
    let root = std::env::temp_dir().join(format!("cdpa-paste-fuzz-{}", std::process::id()));
    for round in 0..300 {
        let mut bytes = texts[(next() % texts.len() as u64) as usize].clone();
        for _ in 0..(1 + next() % 6) {
            let at = (next() % (bytes.len() as u64 + 1)) as usize;
            match next() % 5 {
                0 => bytes.truncate(at),
                1 => bytes.insert(at, b'\n'),
                2 => {
                    let ins = INSERTS[(next() % INSERTS.len() as u64) as usize];
                    bytes.splice(at..at, ins.bytes());
                }
                3 if at < bytes.len() => bytes[at] ^= 1 << (next() % 8),
                _ => {
                    let other = &texts[(next() % texts.len() as u64) as usize];
                    let from = (next() % (other.len() as u64 + 1)) as usize;
                    bytes.splice(at..at, other[from..].iter().copied().take(400));
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        // The readers directly, then the whole path through a bundle directory.
        let _ = super::classify::from_content(&text);
        let _ = super::calicoctl_status::parse(&text);
        let _ = super::iptables_listing::parse(&text, None, 4, None, round % 2 == 0);
        let _ = super::iptables_fragment::parse(&text, None, 4, None);
        let _ = super::nft_text::parse_fragment(&text);
        let _ = super::paste_quoting::rejoin_routes(&text);
        let _ = super::paste_quoting::rejoin_links(&text);
        if round % 10 == 0 {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).expect("fuzz dir");
            std::fs::write(root.join("paste.txt"), &bytes).expect("write");
            let b = read_dir(&root).expect("bundle");
            let _ = analysis::analyse(&b.observed, None, &Policy::default());
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
