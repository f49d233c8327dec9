//! The datastore the daemon follows: none, a directory re-read when its files change, or the
//! Kubernetes API through watchers.

use std::{path::PathBuf, time::SystemTime};

use anyhow::Context as _;

use crate::{
    desired::{Datastore, files, kube},
    observed::error_chain,
    pipeline::{DatastoreSource, KUBE_LIST_TIMEOUT},
};

pub enum DatastoreFeed {
    None,
    Dir {
        dir: PathBuf,
        /// Names, sizes and modification times of the files last read.
        stamp: Vec<(PathBuf, u64, Option<SystemTime>)>,
        /// The last read, or why it failed (a half-written file is retried on the next poll).
        current: Result<Datastore, String>,
    },
    Kube {
        watch: kube::KubeDatastore,
        generation: u64,
        current: Result<Datastore, String>,
    },
}

impl DatastoreFeed {
    pub async fn open(source: &DatastoreSource) -> anyhow::Result<Self> {
        Ok(match source {
            DatastoreSource::None => Self::None,
            DatastoreSource::Dir(dir) => {
                let stamp = stamp(dir);
                Self::Dir {
                    current: read_dir(dir),
                    dir: dir.clone(),
                    stamp,
                }
            }
            DatastoreSource::Kube => {
                let client = kube::client().await?;
                let group = kube::discover_group(&client)
                    .await
                    .context("finding Calico's API group")?;
                let watch = kube::KubeDatastore::start(&client, group);
                watch
                    .ready(KUBE_LIST_TIMEOUT)
                    .await
                    .context("listing the Calico datastore from the Kubernetes API")?;
                Self::Kube {
                    generation: watch.generation(),
                    current: watch.snapshot().map_err(|e| error_chain(&e)),
                    watch,
                }
            }
        })
    }

    /// Takes a new snapshot when the source changed; `true` when it did.
    pub fn poll_changed(&mut self) -> bool {
        match self {
            Self::None => false,
            Self::Dir {
                dir,
                stamp: last,
                current,
            } => {
                let now = stamp(dir);
                if now == *last {
                    return false;
                }
                *last = now;
                *current = read_dir(dir);
                true
            }
            Self::Kube {
                watch,
                generation,
                current,
            } => {
                let g = watch.generation();
                if g == *generation {
                    return false;
                }
                *generation = g;
                *current = watch.snapshot().map_err(|e| error_chain(&e));
                true
            }
        }
    }

    /// The datastore now: `Ok(None)` without one, `Err` naming why it is unusable.
    pub fn current(&self) -> Result<Option<&Datastore>, String> {
        match self {
            Self::None => Ok(None),
            Self::Dir { current, dir, .. } => {
                Self::usable(current, &format!("datastore {}", dir.display()))
            }
            Self::Kube { current, .. } => Self::usable(current, "the Kubernetes API"),
        }
    }

    fn usable<'a>(
        current: &'a Result<Datastore, String>,
        what: &str,
    ) -> Result<Option<&'a Datastore>, String> {
        match current {
            Ok(ds) if ds.is_empty() => Err(format!(
                "{what} holds no Calico objects (IPPools, IPAMBlocks, Nodes, FelixConfigurations)"
            )),
            Ok(ds) => Ok(Some(ds)),
            Err(e) => Err(e.clone()),
        }
    }
}

fn read_dir(dir: &std::path::Path) -> Result<Datastore, String> {
    files::load_dir(dir).map_err(|e| format!("datastore {}: {}", dir.display(), error_chain(&e)))
}

fn stamp(dir: &std::path::Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    // A single file as the datastore: its own size and time.
    if let Some(m) = std::fs::metadata(dir)
        .ok()
        .filter(std::fs::Metadata::is_file)
    {
        return vec![(dir.to_path_buf(), m.len(), m.modified().ok())];
    }
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    v.sort();
    v
}
