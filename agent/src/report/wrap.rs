//! Human output fits an 80-column terminal (`kubectl exec` in a default window): long lines
//! are wrapped at spaces and continued under their own indentation.

use std::fmt::Write as _;

/// The width every line of human output fits in.
pub const WIDTH: usize = 80;

/// Writes `text` as lines of at most [`WIDTH`] characters: the first starts with `first`, the
/// rest with `rest` (usually deeper, so a wrapped line reads as one item). A word longer than
/// a line (a URL, a long command) is cut, so that no line is ever wider.
pub fn write(o: &mut String, first: &str, rest: &str, text: &str) {
    // What fits keeps its own spacing (aligned columns, two spaces between fields).
    if width(first) + width(text) <= WIDTH && !text.contains('\n') {
        let _ = writeln!(o, "{first}{text}");
        return;
    }
    let mut line = String::from(first);
    let mut empty = true;
    for word in text.split_whitespace() {
        let sep = usize::from(!empty);
        if !empty && width(&line) + sep + width(word) > WIDTH {
            let _ = writeln!(o, "{line}");
            line = String::from(rest);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        let mut word = word;
        while width(&line) + width(word) > WIDTH {
            let room = WIDTH.saturating_sub(width(&line)).max(1);
            let cut = word.char_indices().nth(room).map_or(word.len(), |(i, _)| i);
            line.push_str(&word[..cut]);
            let _ = writeln!(o, "{line}");
            line = String::from(rest);
            word = &word[cut..];
        }
        line.push_str(word);
        empty = false;
    }
    let _ = writeln!(o, "{line}");
}

/// `text` wrapped as [`write`] does, as a string.
pub fn lines(first: &str, rest: &str, text: &str) -> String {
    let mut o = String::new();
    write(&mut o, first, rest, text);
    o
}

/// Columns a string takes (one per character: the output holds no wide characters).
pub fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_under_the_continuation_indent() {
        let text = "word ".repeat(40);
        let out = lines("  hint: ", "        ", &text);
        for l in out.lines() {
            assert!(width(l) <= WIDTH, "{l:?}");
        }
        let mut it = out.lines();
        assert!(it.next().is_some_and(|l| l.starts_with("  hint: word")));
        assert!(it.next().is_some_and(|l| l.starts_with("        word")));
        assert_eq!(
            out.split_whitespace().filter(|w| *w == "word").count(),
            40,
            "no word lost"
        );
    }

    #[test]
    fn a_word_wider_than_a_line_is_cut() {
        let out = lines("  ", "    ", &"x".repeat(200));
        assert!(out.lines().all(|l| width(l) <= WIDTH), "{out}");
        assert_eq!(out.chars().filter(|c| *c == 'x').count(), 200);
    }

    #[test]
    fn short_text_is_one_line() {
        assert_eq!(lines("  ", "    ", "a b  c"), "  a b  c\n");
    }
}
