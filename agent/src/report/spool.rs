//! The report spool: every report is written here (fsync'd) before it is sent and removed only
//! once the endpoint acknowledged it, so an unreachable endpoint, a slow one or a killed agent
//! loses nothing. Bounded: past `max_bytes` the oldest reports are dropped and counted.
//!
//! Layout: `state` holds the stream ID and the next sequence number; `reports/` one file per
//! report, named by its zero-padded sequence so a directory listing is the delivery order.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::otlp::Report;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a spool state file")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("encoding a report")]
    Encode(#[source] serde_json::Error),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { op, path, source }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    stream: String,
    next_sequence: u64,
}

/// One spooled report: its sequence and its JSON exactly as it will be sent.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub sequence: u64,
    pub json: String,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: State,
    /// Sequence → file size, oldest first.
    entries: BTreeMap<u64, u64>,
    bytes: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`; a restarted agent continues its stream and
    /// sequence and finds its undelivered reports.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let reports = dir.join("reports");
        fs::create_dir_all(&reports).map_err(io("creating", &reports))?;
        let state_path = dir.join("state");
        let state = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SpoolError::State {
                path: state_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                stream: new_stream_id(),
                next_sequence: 1,
            },
            Err(e) => return Err(io("reading", &state_path)(e)),
        };
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            state,
            entries: BTreeMap::new(),
            bytes: 0,
        };
        for entry in fs::read_dir(&reports).map_err(io("listing", &reports))? {
            let entry = entry.map_err(io("listing", &reports))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // A write cut short by a kill: never acknowledged by anyone, never renamed.
            if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io("removing", &path))?;
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                tracing::warn!(file = %path.display(), "not a spooled report; left alone");
                continue;
            };
            let len = entry.metadata().map_err(io("reading", &path))?.len();
            spool.entries.insert(seq, len);
            spool.bytes += len;
        }
        if let Some(last) = spool.entries.keys().next_back() {
            spool.state.next_sequence = spool.state.next_sequence.max(last + 1);
        }
        spool.write_state()?;
        Ok(spool)
    }

    pub fn stream(&self) -> &str {
        &self.state.stream
    }

    /// Bytes of reports waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Gives `report` the stream and the next sequence number and writes it durably. Returns
    /// the report as spooled and how many older reports were dropped to stay within bounds.
    pub fn append(&mut self, mut report: Report) -> Result<(Report, u64), SpoolError> {
        report.stream.clone_from(&self.state.stream);
        report.sequence = self.state.next_sequence;
        self.state.next_sequence += 1;
        // The sequence is taken before the report exists: after a crash between the two, the
        // collector sees a gap, never a reused number.
        self.write_state()?;
        let json = serde_json::to_string(&report).map_err(SpoolError::Encode)?;
        let path = self.path(report.sequence);
        write_durably(&path, json.as_bytes())?;
        let len = json.len() as u64;
        self.entries.insert(report.sequence, len);
        self.bytes += len;
        let mut dropped = 0;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                break;
            };
            self.remove(oldest)?;
            dropped += 1;
        }
        Ok((report, dropped))
    }

    /// The oldest reports, in order, up to `max_count` and about `max_bytes` (at least one).
    pub fn oldest(&self, max_count: usize, max_bytes: u64) -> Result<Vec<Spooled>, SpoolError> {
        let mut out = Vec::new();
        let mut total = 0;
        for (&sequence, &len) in self.entries.iter().take(max_count) {
            if !out.is_empty() && total + len > max_bytes {
                break;
            }
            let path = self.path(sequence);
            let json = fs::read_to_string(&path).map_err(io("reading", &path))?;
            total += len;
            out.push(Spooled { sequence, json });
        }
        Ok(out)
    }

    /// Removes every report up to and including `sequence` (delivered, or given up on).
    pub fn remove_through(&mut self, sequence: u64) -> Result<usize, SpoolError> {
        let done: Vec<u64> = self.entries.range(..=sequence).map(|(s, _)| *s).collect();
        for s in &done {
            self.remove(*s)?;
        }
        Ok(done.len())
    }

    fn remove(&mut self, sequence: u64) -> Result<(), SpoolError> {
        let path = self.path(sequence);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path)(e)),
        }
        if let Some(len) = self.entries.remove(&sequence) {
            self.bytes -= len;
        }
        Ok(())
    }

    fn path(&self, sequence: u64) -> PathBuf {
        self.dir
            .join("reports")
            .join(format!("{sequence:020}.json"))
    }

    fn write_state(&self) -> Result<(), SpoolError> {
        let json = serde_json::to_vec(&self.state).map_err(SpoolError::Encode)?;
        write_durably(&self.dir.join("state"), &json)
    }
}

/// Write to a temporary file, fsync it, rename it into place and fsync the directory: after a
/// crash the file is either absent or whole.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(bytes).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming", &tmp))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))?;
    }
    Ok(())
}

/// 64 random bits, hex: unique per spool for the collector's (node, stream, sequence) key.
fn new_stream_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::otlp::CounterSummary;

    fn report(n: usize) -> Report {
        let mut r = Report::new("node-a", &[], None, CounterSummary::default(), 1);
        // Reports of different sizes, like real ones with more or fewer findings.
        r.mode = "x".repeat(n);
        r
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn sequences_continue_across_a_restart_and_reports_wait_in_order() {
        let dir = tempdir("restart");
        let mut s = Spool::open(&dir, 1 << 20).expect("open");
        let stream = s.stream().to_string();
        for _ in 0..3 {
            s.append(report(1)).expect("append");
        }
        assert_eq!(s.remove_through(1).expect("remove"), 1);
        drop(s);
        // A write cut short by SIGKILL is discarded.
        fs::write(dir.join("reports/00000000000000000009.tmp"), b"{").expect("tmp");
        let mut s = Spool::open(&dir, 1 << 20).expect("reopen");
        assert_eq!(s.stream(), stream);
        let (r, dropped) = s.append(report(1)).expect("append");
        assert_eq!(
            (r.sequence, r.stream.as_str(), dropped),
            (4, stream.as_str(), 0)
        );
        let seqs: Vec<u64> = s
            .oldest(10, u64::MAX)
            .expect("read")
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(seqs, [2, 3, 4]);
        let back: Report =
            serde_json::from_str(&s.oldest(1, 0).expect("read")[0].json).expect("json");
        assert_eq!(back.sequence, 2);
        assert!(!dir.join("reports/00000000000000000009.tmp").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_each() {
        let dir = tempdir("full");
        let one = serde_json::to_string(&report(100)).expect("json").len() as u64;
        let mut s = Spool::open(&dir, one * 3 + one / 2).expect("open");
        let mut dropped = 0;
        for _ in 0..10 {
            dropped += s.append(report(100)).expect("append").1;
        }
        assert_eq!(dropped, 7);
        assert_eq!(s.len(), 3);
        assert!(s.bytes() <= one * 3 + one / 2);
        let seqs: Vec<u64> = s
            .oldest(10, u64::MAX)
            .expect("read")
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(seqs, [8, 9, 10]);
        // A report larger than the whole bound is still kept: the newest is never dropped.
        let (r, d) = s.append(report(10_000)).expect("append");
        assert_eq!((r.sequence, d, s.len()), (11, 3, 1));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempdir("corrupt");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("state"), b"not json").expect("write");
        let e = Spool::open(&dir, 1).err().expect("refused");
        assert!(e.to_string().contains("state"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
