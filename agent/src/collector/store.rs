//! The collector's store: SQLite in WAL mode with `synchronous=FULL`, so a report the collector
//! acknowledged survives SIGKILL and power loss. One writer thread owns the write connection:
//! request handlers queue their batch with a oneshot, the writer takes everything queued, writes
//! it in one transaction (a savepoint per request, so one failing request leaves the others and
//! nothing of itself), commits — one fsync for the group — and then acknowledges them all.
//! Readers use their own connection; WAL lets them read while the writer writes.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::report::otlp::Report;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating the database's directory {}", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("opening the database {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database is at schema version {found}, newer than this collector's {known}: run a collector at least as new as the one that wrote it"
    )]
    TooNew { found: i64, known: usize },
    #[error("migrating the database to schema version {version}")]
    Migrate {
        version: usize,
        #[source]
        source: rusqlite::Error,
    },
    #[error("SQLite")]
    Sql(#[from] rusqlite::Error),
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("the store's reader panicked")]
    ReaderPanicked,
    #[error("starting the store's writer thread")]
    Thread(#[source] std::io::Error),
    #[error("committing to the database: {0}")]
    Commit(String),
}

/// Schema steps, applied in order; `PRAGMA user_version` is how many have been applied. Append
/// only: a released step is never edited.
const MIGRATIONS: &[&str] = &[
    // 1: reports, the latest per node with its findings, and per-stream sequence tracking.
    "CREATE TABLE reports (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        stream TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        generated_at_ms INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        mode TEXT NOT NULL,
        findings INTEGER NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (node, stream, sequence)
    );
    CREATE INDEX reports_received ON reports (received_at_ms);
    CREATE INDEX reports_node_order ON reports (node, id);
    CREATE TABLE nodes (
        node TEXT PRIMARY KEY,
        stream TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        generated_at_ms INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        agent_version TEXT NOT NULL,
        mode TEXT NOT NULL,
        verdict TEXT NOT NULL,
        received INTEGER NOT NULL,
        stored INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE findings (
        node TEXT NOT NULL,
        check_id TEXT NOT NULL,
        severity TEXT NOT NULL,
        subject TEXT NOT NULL,
        expected TEXT NOT NULL,
        actual TEXT NOT NULL,
        hint TEXT NOT NULL,
        since INTEGER NOT NULL
    );
    CREATE INDEX findings_node ON findings (node);
    CREATE TABLE streams (
        node TEXT NOT NULL,
        stream TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        max_seq INTEGER NOT NULL,
        PRIMARY KEY (node, stream)
    ) WITHOUT ROWID;
    CREATE TABLE gaps (
        node TEXT NOT NULL,
        stream TEXT NOT NULL,
        from_seq INTEGER NOT NULL,
        to_seq INTEGER NOT NULL,
        PRIMARY KEY (node, stream, from_seq)
    ) WITHOUT ROWID;",
    // 2: OTLP metric points (latest value per series), retries counted, findings by check.
    "ALTER TABLE nodes ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE metric_points (
        node TEXT NOT NULL,
        name TEXT NOT NULL,
        attributes TEXT NOT NULL,
        value NOT NULL,
        time_unix_nano INTEGER NOT NULL,
        received_at_ms INTEGER NOT NULL,
        PRIMARY KEY (node, name, attributes)
    ) WITHOUT ROWID;
    CREATE INDEX findings_check ON findings (check_id);",
    // 3: a row is a run of reports in one state. A report whose verdict, mode, findings and
    // checks not run repeat the node's latest extends that row (`last_sequence`) instead of
    // adding one: at 5,000 nodes reporting every minute, a row per report would be 7 M rows a
    // day; runs are one row per change. Order and completeness stay exact (rows are runs of
    // consecutive sequence numbers; the gaps table has the rest).
    "ALTER TABLE reports ADD COLUMN last_sequence INTEGER;
    ALTER TABLE reports ADD COLUMN last_received_at_ms INTEGER;
    ALTER TABLE nodes ADD COLUMN state TEXT NOT NULL DEFAULT '';
    CREATE INDEX reports_run_end ON reports (node, stream, last_sequence);",
];

/// The schema version this collector writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Requests queued together are committed together, up to this many.
const MAX_GROUP: usize = 512;

/// A report as received: the parsed report and its JSON exactly as the agent sent it.
#[derive(Debug, Clone)]
pub struct IncomingReport {
    pub report: Report,
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PointValue {
    Int(i64),
    Double(f64),
}

/// One Sum or Gauge number point.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub node: String,
    pub name: String,
    /// The point's attributes as a JSON object with sorted keys: the series' identity.
    pub attributes: String,
    pub value: PointValue,
    pub time_unix_nano: u64,
}

/// What one request stores; all of it or nothing.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub received_at_ms: u64,
    pub reports: Vec<IncomingReport>,
    pub points: Vec<MetricPoint>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// New reports stored.
    pub stored: usize,
    /// Reports already stored (a retry): ignored.
    pub duplicates: usize,
    pub points: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub reports: usize,
    pub nodes: usize,
}

enum Job {
    Ingest(Batch, oneshot::Sender<Result<Ingested, StoreError>>),
    Retention(i64, oneshot::Sender<Result<Pruned, StoreError>>),
    Stop,
}

/// The store: a handle on the writer thread and a read connection. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let open = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(open)?;
    // WAL: readers never block the writer. FULL: the WAL is fsync'd at every commit, so an
    // acknowledged report survives power loss (NORMAL would only survive a process crash).
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Applies the migration steps the database has not had yet.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(found).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found,
            known: MIGRATIONS.len(),
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = i + 1;
        let fail = |source| StoreError::Migrate { version, source };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(step).map_err(fail)?;
        tx.pragma_update(None, "user_version", i64_of(version as u64))
            .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(version, "database migrated");
    }
    Ok(())
}

impl Store {
    /// Opens (creating it and its directory when missing) and migrates the database, and
    /// starts the writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::CreateDir(dir.into(), e))?;
        }
        let conn = open_writer(path)?;
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.busy_timeout(Duration::from_secs(5)).map(|()| c))
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let (jobs, rx) = mpsc::channel(4096);
        let writer = std::thread::Builder::new()
            .name("collector-store".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(StoreError::Thread)?;
        Ok(Self {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// Stores one request's batch; returns once it is committed to disk.
    pub async fn ingest(&self, batch: Batch) -> Result<Ingested, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Ingest(batch, tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Deletes reports received before `cutoff_ms` (never a node's latest) and nodes whose
    /// latest report is that old.
    pub async fn retention(&self, cutoff_ms: u64) -> Result<Pruned, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Job::Retention(i64_of(cutoff_ms), tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Whether the writer still takes requests.
    pub fn writer_alive(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Runs `f` on the read connection, off the async runtime.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::ReaderPanicked)?
        .map_err(StoreError::from)
    }

    /// Lets the writer finish what is queued, then stops it.
    pub async fn close(&self) {
        let _ = self.jobs.send(Job::Stop).await;
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

fn write_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut stop = false;
    while !stop && let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP
            && let Ok(j) = rx.try_recv()
        {
            jobs.push(j);
        }
        let mut ingests = Vec::new();
        for job in jobs {
            match job {
                Job::Ingest(batch, reply) => ingests.push((batch, reply)),
                Job::Retention(cutoff, reply) => {
                    let _ = reply.send(retention(&mut conn, cutoff));
                }
                Job::Stop => stop = true,
            }
        }
        if !ingests.is_empty() {
            commit_group(&mut conn, ingests);
        }
    }
    tracing::debug!("store writer stopped");
}

type Reply = oneshot::Sender<Result<Ingested, StoreError>>;

/// One transaction for the group, a savepoint per request; acknowledged after the commit.
fn commit_group(conn: &mut Connection, group: Vec<(Batch, Reply)>) {
    let mut results = Vec::with_capacity(group.len());
    let committed = (|| -> Result<(), rusqlite::Error> {
        let mut tx = conn.transaction()?;
        for (batch, reply) in group {
            let mut sp = tx.savepoint()?;
            let result = apply(&sp, &batch);
            if result.is_ok() {
                sp.commit()?;
            } else {
                sp.rollback()?;
            }
            results.push((result.map_err(StoreError::from), reply));
        }
        tx.commit()
    })();
    match committed {
        Ok(()) => {
            for (result, reply) in results {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "committing reports failed");
            for (_, reply) in results {
                let _ = reply.send(Err(StoreError::Commit(e.to_string())));
            }
        }
    }
}

fn apply(c: &Connection, batch: &Batch) -> Result<Ingested, rusqlite::Error> {
    let now = i64_of(batch.received_at_ms);
    let mut out = Ingested::default();
    for r in &batch.reports {
        if store_report(c, r, now)? {
            out.stored += 1;
        } else {
            out.duplicates += 1;
        }
    }
    for p in &batch.points {
        store_point(c, p, now)?;
        out.points += 1;
    }
    Ok(out)
}

/// Stores one report; false when it was already stored (a retry).
fn store_report(c: &Connection, r: &IncomingReport, now: i64) -> Result<bool, rusqlite::Error> {
    let rep = &r.report;
    let (seq, generated) = (i64_of(rep.sequence), i64_of(rep.generated_at_ms));
    let current: Option<(i64, i64, String)> = c
        .prepare_cached("SELECT generated_at_ms, sequence, state FROM nodes WHERE node = ?1")?
        .query_row([&rep.node], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let newest = current
        .as_ref()
        .is_none_or(|(g, s, _)| (generated, seq) > (*g, *s));
    let state = state_of(rep);
    let unchanged = newest && current.as_ref().is_some_and(|(_, _, st)| *st == state);
    let inserted = if seen(c, &rep.node, &rep.stream, seq)? {
        0
    } else if unchanged && extend_run(c, &rep.node, &rep.stream, seq, now)? {
        1
    } else {
        c.prepare_cached(
            "INSERT INTO reports (node, stream, sequence, generated_at_ms, received_at_ms, verdict, mode, findings, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (node, stream, sequence) DO NOTHING",
        )?
        .execute(params![
            rep.node,
            rep.stream,
            seq,
            generated,
            now,
            rep.verdict.as_str(),
            rep.mode,
            i64_of(rep.findings.len() as u64),
            r.body
        ])?
    };
    if inserted == 0 {
        c.prepare_cached("UPDATE nodes SET duplicates = duplicates + 1 WHERE node = ?1")?
            .execute([&rep.node])?;
        return Ok(false);
    }
    track_sequence(c, &rep.node, &rep.stream, seq)?;
    if !newest {
        // An older report arriving late (a spool draining): history, not the node's state.
        c.prepare_cached(
            "UPDATE nodes SET received = received + 1, stored = stored + 1 WHERE node = ?1",
        )?
        .execute([&rep.node])?;
        return Ok(true);
    }
    c.prepare_cached(
        "INSERT INTO nodes (node, stream, sequence, generated_at_ms, received_at_ms, agent_version, mode, verdict, received, stored, state)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, 1, ?9)
         ON CONFLICT (node) DO UPDATE SET stream = excluded.stream, sequence = excluded.sequence,
             generated_at_ms = excluded.generated_at_ms, received_at_ms = excluded.received_at_ms,
             agent_version = excluded.agent_version, mode = excluded.mode, verdict = excluded.verdict,
             received = received + 1, stored = stored + 1, state = excluded.state",
    )?
    .execute(params![
        rep.node,
        rep.stream,
        seq,
        generated,
        now,
        rep.agent_version,
        rep.mode,
        rep.verdict.as_str(),
        state
    ])?;
    if unchanged {
        // The node's findings are those already stored.
        return Ok(true);
    }
    c.prepare_cached("DELETE FROM findings WHERE node = ?1")?
        .execute([&rep.node])?;
    let mut insert = c.prepare_cached(
        "INSERT INTO findings (node, check_id, severity, subject, expected, actual, hint, since)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for f in &rep.findings {
        insert.execute(params![
            rep.node,
            f.check,
            f.severity,
            f.subject,
            f.expected,
            f.actual,
            f.hint,
            i64_of(f.since)
        ])?;
    }
    Ok(true)
}

/// Whether this sequence number of the stream was stored before (a retry): between the first
/// and the highest seen, and in no gap.
fn seen(c: &Connection, node: &str, stream: &str, seq: i64) -> rusqlite::Result<bool> {
    let range: Option<(i64, i64)> = c
        .prepare_cached("SELECT first_seq, max_seq FROM streams WHERE node = ?1 AND stream = ?2")?
        .query_row(params![node, stream], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((first, max)) = range.filter(|&(first, max)| (first..=max).contains(&seq)) else {
        return Ok(false);
    };
    let _ = (first, max);
    let in_gap = c
        .prepare_cached(
            "SELECT 1 FROM gaps WHERE node = ?1 AND stream = ?2 AND from_seq <= ?3 AND to_seq >= ?3",
        )?
        .exists(params![node, stream, seq])?;
    Ok(!in_gap)
}

/// Extends the run that ends just before `seq` in this stream by one report; false when there
/// is none (after a gap, or a new stream).
fn extend_run(
    c: &Connection,
    node: &str,
    stream: &str,
    seq: i64,
    now: i64,
) -> rusqlite::Result<bool> {
    let extended = c
        .prepare_cached(
            "UPDATE reports SET last_sequence = ?3, last_received_at_ms = ?4
             WHERE node = ?1 AND stream = ?2 AND COALESCE(last_sequence, sequence) = ?3 - 1",
        )?
        .execute(params![node, stream, seq, now])?;
    Ok(extended > 0)
}

/// What makes a report a change: its verdict, mode, findings and checks not run (not its
/// sequence, time or counters).
fn state_of(rep: &Report) -> String {
    serde_json::to_string(&(&rep.verdict, &rep.mode, &rep.findings, &rep.not_run))
        .unwrap_or_default()
}

/// Records the gap a jump in the sequence leaves, or fills (splitting if needed) the gap a late
/// report falls in. Sequences below the first seen for a stream are history from before this
/// collector knew the stream, not gaps.
fn track_sequence(c: &Connection, node: &str, stream: &str, seq: i64) -> rusqlite::Result<()> {
    let seen: Option<(i64, i64)> = c
        .prepare_cached("SELECT first_seq, max_seq FROM streams WHERE node = ?1 AND stream = ?2")?
        .query_row(params![node, stream], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let add_gap = |from: i64, to: i64| -> rusqlite::Result<()> {
        c.prepare_cached(
            "INSERT OR REPLACE INTO gaps (node, stream, from_seq, to_seq) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![node, stream, from, to])
        .map(drop)
    };
    match seen {
        None => {
            c.prepare_cached(
                "INSERT INTO streams (node, stream, first_seq, max_seq) VALUES (?1, ?2, ?3, ?3)",
            )?
            .execute(params![node, stream, seq])?;
        }
        Some((_, max)) if seq > max => {
            if seq > max + 1 {
                add_gap(max + 1, seq - 1)?;
            }
            c.prepare_cached("UPDATE streams SET max_seq = ?3 WHERE node = ?1 AND stream = ?2")?
                .execute(params![node, stream, seq])?;
        }
        Some((first, _)) if seq < first => {
            c.prepare_cached("UPDATE streams SET first_seq = ?3 WHERE node = ?1 AND stream = ?2")?
                .execute(params![node, stream, seq])?;
        }
        Some(_) => {
            let gap: Option<(i64, i64)> = c
                .prepare_cached(
                    "SELECT from_seq, to_seq FROM gaps WHERE node = ?1 AND stream = ?2 AND from_seq <= ?3
                     ORDER BY from_seq DESC LIMIT 1",
                )?
                .query_row(params![node, stream, seq], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((from, to)) = gap.filter(|&(_, to)| seq <= to) {
                c.prepare_cached(
                    "DELETE FROM gaps WHERE node = ?1 AND stream = ?2 AND from_seq = ?3",
                )?
                .execute(params![node, stream, from])?;
                if from < seq {
                    add_gap(from, seq - 1)?;
                }
                if seq < to {
                    add_gap(seq + 1, to)?;
                }
            }
        }
    }
    Ok(())
}

fn store_point(c: &Connection, p: &MetricPoint, now: i64) -> rusqlite::Result<()> {
    let value = match p.value {
        PointValue::Int(v) => rusqlite::types::Value::Integer(v),
        PointValue::Double(v) => rusqlite::types::Value::Real(v),
    };
    c.prepare_cached(
        "INSERT INTO metric_points (node, name, attributes, value, time_unix_nano, received_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (node, name, attributes) DO UPDATE SET value = excluded.value,
             time_unix_nano = excluded.time_unix_nano, received_at_ms = excluded.received_at_ms
         WHERE excluded.time_unix_nano >= metric_points.time_unix_nano",
    )?
    .execute(params![
        p.node,
        p.name,
        p.attributes,
        value,
        i64_of(p.time_unix_nano),
        now
    ])?;
    Ok(())
}

fn retention(conn: &mut Connection, cutoff: i64) -> Result<Pruned, StoreError> {
    let tx = conn.transaction()?;
    // Nodes silent for the whole retention go with everything about them.
    let gone = "SELECT node FROM nodes WHERE received_at_ms < ?1";
    for table in ["findings", "reports", "streams", "gaps", "metric_points"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE node IN ({gone})"),
            [cutoff],
        )?;
    }
    let nodes = tx.execute("DELETE FROM nodes WHERE received_at_ms < ?1", [cutoff])?;
    // Series not updated for the whole retention, also of senders that never sent a report.
    tx.execute(
        "DELETE FROM metric_points WHERE received_at_ms < ?1",
        [cutoff],
    )?;
    // A run goes when its last report is older than the cutoff, unless it holds the latest.
    let expired = "FROM reports WHERE COALESCE(last_received_at_ms, received_at_ms) < ?1 AND NOT EXISTS (
             SELECT 1 FROM nodes n WHERE n.node = reports.node AND n.stream = reports.stream
                 AND n.sequence BETWEEN reports.sequence AND COALESCE(reports.last_sequence, reports.sequence))";
    let reports: i64 = tx.query_row(
        &format!(
            "SELECT COALESCE(SUM(COALESCE(last_sequence, sequence) - sequence + 1), 0) {expired}"
        ),
        [cutoff],
        |r| r.get(0),
    )?;
    let reports = usize::try_from(reports).unwrap_or(0);
    tx.execute(&format!("DELETE {expired}"), [cutoff])?;
    if reports > 0 {
        // Gaps older than every report kept are history beyond the retention too.
        tx.execute_batch(
            "DELETE FROM streams WHERE NOT EXISTS (
                 SELECT 1 FROM reports r WHERE r.node = streams.node AND r.stream = streams.stream);
             DELETE FROM gaps WHERE to_seq < COALESCE((
                 SELECT MIN(sequence) FROM reports r WHERE r.node = gaps.node AND r.stream = gaps.stream),
                 to_seq + 1)
                 OR NOT EXISTS (SELECT 1 FROM streams s WHERE s.node = gaps.node AND s.stream = gaps.stream);
             UPDATE nodes SET stored = (SELECT COALESCE(SUM(COALESCE(r.last_sequence, r.sequence) - r.sequence + 1), 0)
                 FROM reports r WHERE r.node = nodes.node);",
        )?;
    }
    tx.commit()?;
    Ok(Pruned { reports, nodes })
}

// ---- Reads ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub stream: String,
    pub from: u64,
    pub to: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeverityCounts {
    pub critical: u64,
    pub warning: u64,
    pub info: u64,
    /// Severities this collector does not know (a newer agent).
    pub other: u64,
}

impl SeverityCounts {
    pub fn total(&self) -> u64 {
        self.critical + self.warning + self.info + self.other
    }
}

/// A node's latest report and what is known about its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    pub stream: String,
    pub sequence: u64,
    pub generated_at_ms: u64,
    pub received_at_ms: u64,
    pub agent_version: String,
    pub mode: String,
    pub verdict: String,
    pub received: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub findings: SeverityCounts,
    pub gaps: Vec<Gap>,
}

impl NodeRow {
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|g| g.to - g.from + 1).sum()
    }
}

/// Every node, by name.
pub fn nodes(c: &Connection) -> rusqlite::Result<Vec<NodeRow>> {
    let mut out: Vec<NodeRow> = c
        .prepare(
            "SELECT node, stream, sequence, generated_at_ms, received_at_ms, agent_version, mode,
                    verdict, received, stored, duplicates
             FROM nodes ORDER BY node",
        )?
        .query_map([], |r| {
            Ok(NodeRow {
                node: r.get(0)?,
                stream: r.get(1)?,
                sequence: u64_of(r.get(2)?),
                generated_at_ms: u64_of(r.get(3)?),
                received_at_ms: u64_of(r.get(4)?),
                agent_version: r.get(5)?,
                mode: r.get(6)?,
                verdict: r.get(7)?,
                received: u64_of(r.get(8)?),
                stored: u64_of(r.get(9)?),
                duplicates: u64_of(r.get(10)?),
                findings: SeverityCounts::default(),
                gaps: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let index = |out: &[NodeRow], node: &str| out.binary_search_by(|n| n.node.as_str().cmp(node));
    let mut counts =
        c.prepare("SELECT node, severity, COUNT(*) FROM findings GROUP BY node, severity")?;
    let mut rows = counts.query([])?;
    while let Some(r) = rows.next()? {
        let (node, severity, n): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if let Ok(i) = index(&out, &node) {
            let s = &mut out[i].findings;
            let slot = match severity.as_str() {
                "critical" => &mut s.critical,
                "warning" => &mut s.warning,
                "info" => &mut s.info,
                _ => &mut s.other,
            };
            *slot += u64_of(n);
        }
    }
    let mut gaps = c.prepare(
        "SELECT node, stream, from_seq, to_seq FROM gaps ORDER BY node, stream, from_seq",
    )?;
    let mut rows = gaps.query([])?;
    while let Some(r) = rows.next()? {
        let node: String = r.get(0)?;
        if let Ok(i) = index(&out, &node) {
            out[i].gaps.push(Gap {
                stream: r.get(1)?,
                from: u64_of(r.get(2)?),
                to: u64_of(r.get(3)?),
            });
        }
    }
    Ok(out)
}

/// A current finding: one of those in its node's latest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindingRow {
    pub node: String,
    pub check: String,
    pub severity: String,
    pub subject: String,
    pub expected: String,
    pub actual: String,
    pub hint: String,
    /// Seconds since the epoch when the agent first saw it.
    pub since: u64,
}

/// Current findings, optionally of one check and one node; critical first.
pub fn findings(
    c: &Connection,
    check: Option<&str>,
    node: Option<&str>,
) -> rusqlite::Result<Vec<FindingRow>> {
    c.prepare_cached(
        "SELECT node, check_id, severity, subject, expected, actual, hint, since FROM findings
         WHERE (?1 IS NULL OR check_id = ?1) AND (?2 IS NULL OR node = ?2)
         ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 WHEN 'info' THEN 3 ELSE 2 END,
                  node, check_id, subject",
    )?
    .query_map(params![check, node], |r| {
        Ok(FindingRow {
            node: r.get(0)?,
            check: r.get(1)?,
            severity: r.get(2)?,
            subject: r.get(3)?,
            expected: r.get(4)?,
            actual: r.get(5)?,
            hint: r.get(6)?,
            since: u64_of(r.get(7)?),
        })
    })?
    .collect()
}

/// A stored report, without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportRow {
    /// Position in the order the collector received reports (all nodes).
    pub received_order: u64,
    pub stream: String,
    pub sequence: u64,
    pub generated_at_ms: u64,
    pub received_at_ms: u64,
    pub verdict: String,
    pub findings: u64,
    /// The row is a run: reports `sequence`..=`last_sequence` of the stream, each repeating the
    /// first one's verdict, mode and findings (only the first one's body is kept).
    pub last_sequence: u64,
    /// When the run's last report arrived.
    pub last_received_at_ms: u64,
}

/// The node's last `limit` reports, in the order they were received (oldest first).
pub fn reports(c: &Connection, node: &str, limit: u64) -> rusqlite::Result<Vec<ReportRow>> {
    let mut out: Vec<ReportRow> = c
        .prepare_cached(
            "SELECT id, stream, sequence, generated_at_ms, received_at_ms, verdict, findings,
                    COALESCE(last_sequence, sequence), COALESCE(last_received_at_ms, received_at_ms)
             FROM reports WHERE node = ?1 ORDER BY id DESC LIMIT ?2",
        )?
        .query_map(params![node, i64_of(limit)], |r| {
            Ok(ReportRow {
                received_order: u64_of(r.get(0)?),
                stream: r.get(1)?,
                sequence: u64_of(r.get(2)?),
                generated_at_ms: u64_of(r.get(3)?),
                received_at_ms: u64_of(r.get(4)?),
                verdict: r.get(5)?,
                findings: u64_of(r.get(6)?),
                last_sequence: u64_of(r.get(7)?),
                last_received_at_ms: u64_of(r.get(8)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    out.reverse();
    Ok(out)
}

/// The stored body (the report's JSON as the agent sent it) of the report that starts a run.
pub fn report_body(
    c: &Connection,
    node: &str,
    stream: &str,
    sequence: u64,
) -> rusqlite::Result<Option<String>> {
    c.prepare_cached("SELECT body FROM reports WHERE node = ?1 AND stream = ?2 AND sequence = ?3")?
        .query_row(params![node, stream, i64_of(sequence)], |r| r.get(0))
        .optional()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointRow {
    pub name: String,
    pub attributes: serde_json::Value,
    pub value: PointValue,
    pub time_unix_nano: u64,
    pub received_at_ms: u64,
}

/// The latest value of each of the node's metric series.
pub fn points(c: &Connection, node: &str) -> rusqlite::Result<Vec<PointRow>> {
    c.prepare_cached(
        "SELECT name, attributes, value, time_unix_nano, received_at_ms FROM metric_points
         WHERE node = ?1 ORDER BY name, attributes",
    )?
    .query_map([node], |r| {
        let attributes: String = r.get(1)?;
        let value = match r.get_ref(2)? {
            rusqlite::types::ValueRef::Integer(i) => PointValue::Int(i),
            other => PointValue::Double(other.as_f64().unwrap_or(f64::NAN)),
        };
        Ok(PointRow {
            name: r.get(0)?,
            attributes: serde_json::from_str(&attributes).unwrap_or(serde_json::Value::Null),
            value,
            time_unix_nano: u64_of(r.get(3)?),
            received_at_ms: u64_of(r.get(4)?),
        })
    })?
    .collect()
}

/// The cluster in numbers, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub nodes: u64,
    /// Nodes whose latest report arrived before the stale cutoff.
    pub stale: u64,
    pub missing_reports: u64,
    /// Nodes with a critical or warning finding, per check.
    pub drifting_per_check: Vec<(String, u64)>,
    /// Findings per (check, severity).
    pub findings: Vec<(String, String, u64)>,
}

pub fn summary(c: &Connection, stale_before_ms: u64) -> rusqlite::Result<Summary> {
    let (nodes, stale): (i64, i64) = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(received_at_ms < ?1), 0) FROM nodes",
        [i64_of(stale_before_ms)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let missing: i64 = c.query_row(
        "SELECT COALESCE(SUM(to_seq - from_seq + 1), 0) FROM gaps",
        [],
        |r| r.get(0),
    )?;
    let drifting_per_check = c
        .prepare(
            "SELECT check_id, COUNT(DISTINCT node) FROM findings
             WHERE severity IN ('critical', 'warning') GROUP BY check_id ORDER BY check_id",
        )?
        .query_map([], |r| Ok((r.get(0)?, u64_of(r.get(1)?))))?
        .collect::<rusqlite::Result<_>>()?;
    let findings = c
        .prepare(
            "SELECT check_id, severity, COUNT(*) FROM findings GROUP BY check_id, severity
             ORDER BY check_id, severity",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, u64_of(r.get(2)?))))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Summary {
        nodes: u64_of(nodes),
        stale: u64_of(stale),
        missing_reports: u64_of(missing),
        drifting_per_check,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::testutil::{TempDir, batch, finding, report};

    fn open(dir: &TempDir) -> Store {
        Store::open(&dir.path().join("sub/collector.db")).expect("open")
    }

    async fn gaps_of(store: &Store, node: &str) -> Vec<(u64, u64)> {
        let node = node.to_string();
        store
            .read(nodes)
            .await
            .expect("nodes")
            .into_iter()
            .find(|n| n.node == node)
            .map(|n| n.gaps.iter().map(|g| (g.from, g.to)).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn reports_that_repeat_the_last_extend_its_run() {
        let dir = TempDir::new("runs");
        let store = open(&dir);
        let drift = || vec![finding("route.missing", "10.244.1.0/26")];
        let sent = [
            (1, Vec::new()),
            (2, Vec::new()),
            (3, drift()),
            (4, drift()),
            (5, drift()),
            (7, drift()),
            (6, drift()),
            (8, Vec::new()),
        ];
        for (seq, f) in sent {
            let b = batch(vec![report("n", "s1", seq, f)]);
            assert_eq!(store.ingest(b.clone()).await.expect("ingest").stored, 1);
            // A retry of any report, inside a run or not, is one.
            assert_eq!(store.ingest(b).await.expect("retry").duplicates, 1);
        }
        let rows = store.read(|c| reports(c, "n", 10)).await.expect("rows");
        let runs: Vec<(u64, u64)> = rows.iter().map(|r| (r.sequence, r.last_sequence)).collect();
        // 7 arrived before 6: a row of its own (6 was a gap then), and 6 fills the gap.
        assert_eq!(runs, [(1, 2), (3, 5), (7, 7), (6, 6), (8, 8)]);
        assert!(gaps_of(&store, "n").await.is_empty());
        let n = store.read(nodes).await.expect("nodes");
        assert_eq!((n[0].stored, n[0].sequence), (8, 8));
        let body = store
            .read(|c| report_body(c, "n", "s1", 3))
            .await
            .expect("body")
            .expect("row");
        assert!(body.contains("route.missing"));
        // The node's findings follow the latest report.
        let f = store
            .read(|c| findings(c, None, Some("n")))
            .await
            .expect("findings");
        assert!(f.is_empty(), "{f:?}");
    }

    async fn send(store: &Store, node: &str, seqs: &[u64]) -> Ingested {
        store
            .ingest(batch(
                seqs.iter()
                    .map(|&s| report(node, "s1", s, Vec::new()))
                    .collect(),
            ))
            .await
            .expect("ingest")
    }

    #[tokio::test]
    async fn retries_are_stored_once() {
        let dir = TempDir::new("store-idem");
        let store = open(&dir);
        assert_eq!(send(&store, "node-a", &[1, 2]).await.stored, 2);
        let again = send(&store, "node-a", &[2, 1, 3]).await;
        assert_eq!((again.stored, again.duplicates), (1, 2));
        let rows = store
            .read(|c| reports(c, "node-a", 100))
            .await
            .expect("reports");
        let seqs: Vec<u64> = rows
            .iter()
            .flat_map(|r| r.sequence..=r.last_sequence)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        let n = &store.read(nodes).await.expect("nodes")[0];
        assert_eq!(
            (n.stored, n.received, n.duplicates, n.sequence),
            (3, 3, 2, 3)
        );
        // The same sequence in another stream is another report.
        store
            .ingest(batch(vec![report("node-a", "s2", 1, Vec::new())]))
            .await
            .expect("ingest");
        assert_eq!(
            store
                .read(|c| reports(c, "node-a", 100))
                .await
                .expect("r")
                .iter()
                .map(|r| (r.stream.as_str(), r.sequence, r.last_sequence))
                .collect::<Vec<_>>(),
            [("s1", 1, 3), ("s2", 1, 1)]
        );
        store.close().await;
    }

    #[tokio::test]
    async fn gaps_open_on_a_jump_and_late_reports_fill_or_split_them() {
        let dir = TempDir::new("store-gaps");
        let store = open(&dir);
        send(&store, "node-a", &[1, 2, 5]).await;
        assert_eq!(gaps_of(&store, "node-a").await, [(3, 4)]);
        send(&store, "node-a", &[4]).await;
        assert_eq!(gaps_of(&store, "node-a").await, [(3, 3)]);
        send(&store, "node-a", &[3]).await;
        assert!(gaps_of(&store, "node-a").await.is_empty());

        send(&store, "node-b", &[1, 10]).await;
        send(&store, "node-b", &[5]).await;
        assert_eq!(gaps_of(&store, "node-b").await, [(2, 4), (6, 9)]);
        send(&store, "node-b", &[2, 9]).await;
        assert_eq!(gaps_of(&store, "node-b").await, [(3, 4), (6, 8)]);
        let n = store.read(nodes).await.expect("nodes");
        assert_eq!(n[1].missing(), 5);

        // The collector first hears of a stream at 7: what came before is not missing.
        send(&store, "node-c", &[7, 8]).await;
        send(&store, "node-c", &[3]).await;
        assert!(gaps_of(&store, "node-c").await.is_empty());
        let summary = store.read(|c| summary(c, 0)).await.expect("summary");
        assert_eq!(summary.missing_reports, 5);
        store.close().await;
    }

    #[tokio::test]
    async fn the_latest_report_by_generation_time_holds_the_nodes_findings() {
        let dir = TempDir::new("store-latest");
        let store = open(&dir);
        let drift = report(
            "node-a",
            "s1",
            5,
            vec![finding("route.missing", "10.244.1.0/26")],
        );
        store.ingest(batch(vec![drift])).await.expect("ingest");
        // A late, older, clean report (a spool draining) does not clear the finding.
        store
            .ingest(batch(vec![report("node-a", "s1", 4, Vec::new())]))
            .await
            .expect("ingest");
        let f = store
            .read(|c| findings(c, None, None))
            .await
            .expect("findings");
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].check.as_str(), f[0].node.as_str()),
            ("route.missing", "node-a")
        );
        let n = &store.read(nodes).await.expect("nodes")[0];
        assert_eq!(
            (n.sequence, n.verdict.as_str(), n.findings.critical),
            (5, "drift", 1)
        );
        // A newer clean one does.
        store
            .ingest(batch(vec![report("node-a", "s1", 6, Vec::new())]))
            .await
            .expect("ingest");
        assert!(
            store
                .read(|c| findings(c, None, Some("node-gone")))
                .await
                .expect("f")
                .is_empty()
        );
        let only = store
            .read(|c| findings(c, Some("route.missing"), Some("node-b")))
            .await
            .expect("filtered");
        assert!(only.is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn retention_keeps_each_nodes_latest_and_forgets_silent_nodes() {
        let dir = TempDir::new("store-retention");
        let store = open(&dir);
        let mut old = batch(vec![
            report("node-a", "s1", 1, Vec::new()),
            report("node-a", "s1", 2, Vec::new()),
            report("node-a", "s1", 5, Vec::new()),
            report("node-gone", "s1", 1, vec![finding("route.missing", "x")]),
        ]);
        old.received_at_ms = 1_000;
        old.points.push(MetricPoint {
            node: "metrics-only".into(),
            name: "c".into(),
            attributes: "{}".into(),
            value: PointValue::Int(1),
            time_unix_nano: 1,
        });
        store.ingest(old).await.expect("old");
        // A change: a row of its own, so 5's run ends before the cutoff.
        let mut new = batch(vec![report(
            "node-a",
            "s1",
            6,
            vec![finding("mtu.tunnel.mismatch", "vxlan.calico")],
        )]);
        new.received_at_ms = 5_000;
        store.ingest(new).await.expect("new");
        assert_eq!(gaps_of(&store, "node-a").await, [(3, 4)]);

        let pruned = store.retention(2_000).await.expect("retention");
        assert_eq!(
            pruned,
            Pruned {
                reports: 3,
                nodes: 1
            }
        );
        let n = store.read(nodes).await.expect("nodes");
        assert_eq!(n.len(), 1);
        assert_eq!(
            (n[0].node.as_str(), n[0].stored, n[0].received),
            ("node-a", 1, 4)
        );
        // The gap lay before every report kept: history beyond the retention.
        assert!(n[0].gaps.is_empty());
        let series = store.read(|c| points(c, "metrics-only")).await.expect("p");
        assert!(series.is_empty(), "{series:?}");
        assert!(
            store
                .read(|c| findings(c, None, Some("node-gone")))
                .await
                .expect("f")
                .is_empty()
        );

        // Never a node's latest, however old.
        let mut quiet = batch(vec![report("node-b", "s1", 1, Vec::new())]);
        quiet.received_at_ms = 3_000;
        store.ingest(quiet).await.expect("quiet");
        assert_eq!(store.retention(2_500).await.expect("r"), Pruned::default());
        store.close().await;
    }

    #[tokio::test]
    async fn a_failing_request_stores_nothing_and_does_not_fail_its_group() {
        let dir = TempDir::new("store-atomic");
        let store = open(&dir);
        let mut bad = batch(vec![report("node-bad", "s1", 1, Vec::new())]);
        // SQLite stores NaN as NULL, which the schema refuses: the request fails at its end.
        bad.points.push(MetricPoint {
            node: "node-bad".into(),
            name: "x".into(),
            attributes: "{}".into(),
            value: PointValue::Double(f64::NAN),
            time_unix_nano: 1,
        });
        let good = batch(vec![report("node-good", "s1", 1, Vec::new())]);
        let (bad, good) = tokio::join!(store.ingest(bad), store.ingest(good));
        assert!(bad.is_err());
        assert_eq!(good.expect("good").stored, 1);
        let names: Vec<String> = store
            .read(nodes)
            .await
            .expect("nodes")
            .into_iter()
            .map(|n| n.node)
            .collect();
        assert_eq!(names, ["node-good"]);
        assert!(
            store
                .read(|c| reports(c, "node-bad", 10))
                .await
                .expect("r")
                .is_empty()
        );
        store.close().await;
    }

    #[tokio::test]
    async fn metric_points_keep_the_latest_value_per_series() {
        let dir = TempDir::new("store-points");
        let store = open(&dir);
        let point = |t: u64, v: i64| MetricPoint {
            node: "node-a".into(),
            name: "calico_dpagent.drops".into(),
            attributes: r#"{"reason":"NO_SOCKET"}"#.into(),
            value: PointValue::Int(v),
            time_unix_nano: t,
        };
        for (t, v) in [(10, 1), (30, 3), (20, 2)] {
            let mut b = batch(Vec::new());
            b.points.push(point(t, v));
            store.ingest(b).await.expect("ingest");
        }
        let p = store.read(|c| points(c, "node-a")).await.expect("points");
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].value, p[0].time_unix_nano), (PointValue::Int(3), 30));
        assert_eq!(p[0].attributes["reason"], "NO_SOCKET");
        store.close().await;
    }

    #[tokio::test]
    async fn an_old_database_is_migrated_and_keeps_its_reports() {
        let dir = TempDir::new("store-migrate");
        let path = dir.path().join("collector.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(MIGRATIONS[0]).expect("v1");
            c.pragma_update(None, "user_version", 1).expect("version");
            c.execute(
                "INSERT INTO nodes (node, stream, sequence, generated_at_ms, received_at_ms, agent_version, mode, verdict, received, stored)
                 VALUES ('node-old', 's1', 3, 1, 1, '0.0.9', 'VXLAN', 'clean', 3, 3)",
                [],
            )
            .expect("node");
        }
        let store = Store::open(&path).expect("migrates");
        let n = store.read(nodes).await.expect("nodes");
        assert_eq!((n[0].node.as_str(), n[0].duplicates), ("node-old", 0));
        // What version 2 added works.
        send(&store, "node-old", &[3]).await;
        let n = store.read(nodes).await.expect("nodes");
        assert_eq!(
            n[0].stored, 4,
            "sequence 3 of s1 was not in the reports table"
        );
        let version: i64 = store
            .read(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)))
            .await
            .expect("version");
        assert_eq!(version, i64_of(SCHEMA_VERSION as u64));
        store.close().await;

        let c = Connection::open(&path).expect("open");
        c.pragma_update(None, "user_version", 99).expect("version");
        drop(c);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
