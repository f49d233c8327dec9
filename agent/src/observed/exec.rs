//! Running the userspace tools (`iptables-save`, `nft`) whose output is the only complete view
//! of their state, with a timeout and errors that say what to do.

use std::{io, time::Duration};

use tokio::process::Command;

/// A dump that takes longer than this is hung on a lock (xtables.lock) or the kernel.
pub(super) const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("{program} is not installed")]
    NotFound { program: String },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error(
        "{program} lacks a privilege: {stderr} (needs {needs} in the node's network namespace)"
    )]
    Permission {
        program: String,
        stderr: String,
        /// The capability that was missing.
        needs: &'static str,
    },
    #[error("{program} did not finish within {}s", TIMEOUT.as_secs())]
    Timeout { program: String },
    #[error("could not start {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// Runs `program args…` and returns its stdout.
pub async fn run(program: &str, args: &[&str]) -> Result<String, ExecError> {
    let child = Command::new(program).args(args).kill_on_drop(true).output();
    let out = match tokio::time::timeout(TIMEOUT, child).await {
        Err(_) => {
            return Err(ExecError::Timeout {
                program: program.into(),
            });
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExecError::NotFound {
                program: program.into(),
            });
        }
        Ok(Err(source)) => {
            return Err(ExecError::Spawn {
                program: program.into(),
                source,
            });
        }
        Ok(Ok(out)) => out,
    };
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() {
        return Err(failure(program, out.status.to_string(), stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A tool that exited non-zero: a missing privilege when its stderr says so (naming the
/// capability), else the failure with its stderr.
pub(super) fn failure(program: &str, status: String, stderr: String) -> ExecError {
    let lower = stderr.to_lowercase();
    // iptables-save opens an ipset socket for every `-m set` match (Felix's rules are full
    // of them): without CAP_NET_RAW it says only this.
    let needs = if lower.contains("can't open socket to ipset") {
        Some("CAP_NET_RAW")
    } else if lower.contains("permission denied") || lower.contains("operation not permitted") {
        Some("CAP_NET_ADMIN")
    } else {
        None
    };
    if let Some(needs) = needs {
        return ExecError::Permission {
            program: program.into(),
            stderr,
            needs,
        };
    }
    ExecError::Failed {
        program: program.into(),
        status,
        stderr,
    }
}
