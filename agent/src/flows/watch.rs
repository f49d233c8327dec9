//! `agent flows`: attach, count for a window (or until interrupted with `--watch`), report.
//! The session is dropped, and every program detached, on every way out: end of window,
//! SIGINT, SIGTERM, error.

use std::time::Duration;

use super::{FlowsError, ProbeOptions, Session, report::FlowsReport};
use crate::observed;

/// What `agent flows` was asked for.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub node: String,
    pub probe: ProbeOptions,
    /// Attach only to this interface.
    pub iface: Option<String>,
    pub seconds: u64,
    pub top: usize,
    /// Keep reporting every `seconds` until interrupted.
    pub watch: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Flows(#[from] FlowsError),
    #[error("no interface {0} to attach to")]
    NoSuchInterface(String),
    #[error("could not install the SIGTERM handler")]
    Signal(#[source] std::io::Error),
}

/// Runs the probe and hands each report to `emit`. A failed load is returned before anything
/// is counted, so the caller can say "flows unavailable".
pub async fn run(opts: WatchOptions, mut emit: impl FnMut(&FlowsReport)) -> Result<(), WatchError> {
    let mut session = Session::start(opts.probe, opts.iface.as_deref())?;
    let started = std::time::Instant::now();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(WatchError::Signal)?;
    // Workload veths come and go with pods: a link event attaches to a new one within
    // milliseconds. Without events (a socket error), a re-scan every second does it.
    let mut events = match observed::netlink::LinkEvents::subscribe() {
        Ok(e) => Some(e),
        Err(e) => {
            session.notes.push(format!(
                "no link events ({}): new interfaces are found by a re-scan every second",
                observed::error_chain(&e)
            ));
            None
        }
    };
    loop {
        refresh(&mut session).await;
        if let Some(iface) = opts.iface.as_ref().filter(|_| session.targets.is_empty()) {
            return Err(WatchError::NoSuchInterface(iface.clone()));
        }
        let mut stop = false;
        let end = tokio::time::Instant::now() + Duration::from_secs(opts.seconds.max(1));
        loop {
            let changed = async {
                match events.as_mut() {
                    Some(e) => e.changed().await,
                    None => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Some(())
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(end) => break,
                c = changed => match c {
                    Some(()) => refresh(&mut session).await,
                    // The subscription ended: fall back to re-scanning.
                    None => events = None,
                },
                _ = tokio::signal::ctrl_c() => { stop = true; break; }
                _ = term.recv() => { stop = true; break; }
            }
        }
        // Counts are cumulative from the first attach (also across --watch refreshes).
        emit(&session.report(&opts.node, started.elapsed().as_secs(), opts.top)?);
        if stop || !opts.watch {
            return Ok(());
        }
    }
}

/// Attaches to new interfaces; a failed listing is logged and retried on the next event or
/// tick, never the end of the run.
pub async fn refresh(session: &mut Session) {
    match observed::read_interfaces().await {
        Ok(obs) => session.refresh(&obs),
        Err(e) => {
            tracing::warn!(error = %observed::error_chain(&e), "listing interfaces over netlink")
        }
    }
}
