//! Splitting a file that holds several pasted command outputs into one section per command.
//!
//! A section starts at a shell prompt line (`$ ip -d route show table all`,
//! `root@node-a:~# ip neigh`, `[root@node ~]# bridge fdb`, `# iptables-save`) or at a
//! `==> file <==` header as `tail`/`head` print between files. A bare `# ` starts a section only
//! when a known program follows it, since iptables-save and nft print `#` comments of their own.

use serde::Serialize;

use super::classify::{KNOWN_PROGRAMS, command_words};

/// A part of a file, with the command or file name that introduced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    /// The command after the prompt, as typed.
    pub command: Option<String>,
    /// The file name of a `==> name <==` header.
    pub label: Option<String>,
    /// Line number in the file of the section's first line (1-based), for notes.
    pub first_line: usize,
    pub text: String,
    /// Another prompt or header followed it: the command's output ended there, so its last
    /// part was not cut off by the end of the paste.
    #[serde(skip)]
    pub ended: bool,
}

impl Section {
    /// A whole file as one section.
    pub fn whole(text: &str) -> Self {
        Self {
            command: None,
            label: None,
            first_line: 1,
            text: text.to_string(),
            ended: false,
        }
    }
}

/// Splits `text` at prompt lines and `==> name <==` headers. A file without any is one section
/// starting at line 1.
pub fn split(text: &str) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut current = Section {
        command: None,
        label: None,
        first_line: 1,
        text: String::new(),
        ended: false,
    };
    for (n, line) in text.lines().enumerate() {
        let boundary = header_label(line)
            .map(|label| (None, Some(label)))
            .or_else(|| prompt_command(line).map(|cmd| (Some(cmd), None)));
        let Some((command, label)) = boundary else {
            current.text.push_str(line);
            current.text.push('\n');
            continue;
        };
        let next = Section {
            command: command.filter(|c| !c.is_empty()),
            label,
            first_line: n + 2,
            text: String::new(),
            ended: false,
        };
        current.ended = true;
        push(&mut sections, std::mem::replace(&mut current, next));
    }
    push(&mut sections, current);
    sections
}

/// Keeps sections that have a command or a label (even with empty output: an empty `ip neigh`
/// says there are no neighbours) and unlabelled text that is not blank.
fn push(sections: &mut Vec<Section>, s: Section) {
    if s.command.is_some() || s.label.is_some() || !s.text.trim().is_empty() {
        sections.push(s);
    }
}

/// `==> /var/log/x <==`
fn header_label(line: &str) -> Option<String> {
    let inner = line.trim().strip_prefix("==> ")?.strip_suffix(" <==")?;
    Some(inner.trim().to_string())
}

/// The command typed after a shell prompt, if `line` is one (an empty string for a bare
/// prompt).
pub fn prompt_command(line: &str) -> Option<String> {
    // A prompt indented with the rest of a pasted block (a Markdown code block made by
    // indenting) is still a prompt.
    let line = line.trim();
    if let Some(cmd) = line
        .strip_prefix("$ ")
        .or_else(|| (line == "$").then_some(""))
    {
        return Some(cmd.trim().to_string());
    }
    if let Some(cmd) = line.strip_prefix("# ") {
        return is_known_command(cmd).then(|| cmd.trim().to_string());
    }
    // `user@host:~# cmd`, `host:~ # cmd`, `[user@host dir]$ cmd`.
    let pos = prompt_end(line)?;
    let prefix = line[..pos].trim_end();
    let bracketed = prefix.starts_with('[') && prefix.ends_with(']');
    let plausible = bracketed
        || (!prefix.contains(char::is_whitespace)
            && (prefix.contains('@') || prefix.contains(':')));
    if prefix.is_empty() || !plausible || prefix.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(line[pos + 1..].trim().to_string())
}

/// Index of the `$` or `#` that ends a prompt: followed by a space or the end of the line.
fn prompt_end(line: &str) -> Option<usize> {
    line.char_indices()
        .find(|(i, c)| {
            matches!(c, '$' | '#') && line[i + 1..].chars().next().is_none_or(|n| n == ' ')
        })
        .map(|(i, _)| i)
}

pub(super) fn is_known_command(cmd: &str) -> bool {
    command_words(cmd)
        .first()
        .and_then(|p| p.rsplit('/').next())
        .is_some_and(|p| KNOWN_PROGRAMS.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_session_splits_at_each_prompt() {
        let text = include_str!("testdata/pasted/session.txt");
        let sections = split(text);
        let summary: Vec<(Option<&str>, Option<&str>, usize, usize)> = sections
            .iter()
            .map(|s| {
                (
                    s.command.as_deref(),
                    s.label.as_deref(),
                    s.first_line,
                    s.text.lines().count(),
                )
            })
            .collect();
        insta::assert_yaml_snapshot!(summary);
    }

    #[test]
    fn prompts_are_told_from_comments() {
        assert_eq!(prompt_command("$ ip route").as_deref(), Some("ip route"));
        assert_eq!(
            prompt_command("root@node-a:~# ip neigh").as_deref(),
            Some("ip neigh")
        );
        assert_eq!(
            prompt_command("[root@node ~]# bridge fdb").as_deref(),
            Some("bridge fdb")
        );
        assert_eq!(
            prompt_command("node-a:~ # ip rule").as_deref(),
            Some("ip rule")
        );
        assert_eq!(
            prompt_command("# iptables-save -c").as_deref(),
            Some("iptables-save -c")
        );
        assert_eq!(prompt_command("ubuntu@ip-10-0-0-1:~$").as_deref(), Some(""));
        // iptables-save and nft comments, and data lines, are not prompts.
        for not_prompt in [
            "# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Nov 23 18:47:04 2026",
            "# Warning: table ip nat is managed by iptables-nft, do not touch!",
            "# Completed on Mon Nov 23 18:47:06 2026",
            "\t\tcounter packets 0 bytes 0 jump x # handle 5",
            "table ip calico { # handle 3",
            "-A INPUT -m comment --comment \"a@b:c# x\" -j ACCEPT",
            "10.0.0.1 dev eth0 lladdr 02:00:00:00:00:01 REACHABLE",
            "1.2.3.4:# odd",
        ] {
            assert_eq!(prompt_command(not_prompt), None, "{not_prompt}");
        }
    }

    #[test]
    fn tail_headers_label_sections() {
        let sections = split(
            "==> routes <==\n10.0.0.0/8 dev eth0\n\n==> neigh <==\n10.0.0.1 dev eth0 FAILED\n",
        );
        let labels: Vec<Option<&str>> = sections.iter().map(|s| s.label.as_deref()).collect();
        assert_eq!(labels, [Some("routes"), Some("neigh")]);
        assert_eq!(sections[1].first_line, 5);
        assert_eq!(split("plain\ntext\n").len(), 1);
        assert!(split("").is_empty());
    }
}
