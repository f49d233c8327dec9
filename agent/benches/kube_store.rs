//! What `agent run --kube` keeps of the Kubernetes datastore at real cluster sizes, and what
//! a new snapshot of it costs: the agent's watchers against an in-process API server (there is
//! no cluster here) serving 1,000, 5,000 and 10,000 nodes as the API server lists them, in pages
//! (`xtask::cluster::kube_lists`: Kubernetes Nodes with the kubelet's status and managedFields,
//! IPAM blocks with their pods, affinities); Nodes as metadata only to a client that asks for
//! that, as the agent does. The baseline in the same run is a reflector store
//! of the same objects as served and a snapshot parsing them all, which is what the agent did
//! before. Heap is counted by a global allocator wrapper (live bytes), so those figures are
//! exact. Then the whole daemon: the release binary in a network namespace holding node 0's
//! real state, served there, and its resident memory. Prints a Markdown table for
//! BENCHMARKS.md; needs root; `cargo xtask bench` runs it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use agent::desired::{
    Datastore,
    kube::{CalicoGroup, KubeDatastore, load_objects, resources},
};
use anyhow::Context as _;
use axum::{
    Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::get,
};
use kube::{
    api::{ApiResource, DynamicObject},
    runtime::{reflector, watcher},
};
use xtask::cluster::{Cluster, asks_for_metadata_only, metadata_only};

const SIZES: [u32; 3] = [1_000, 5_000, 10_000];
/// Snapshots per measure; the median is reported.
const RUNS: usize = 11;

/// Live heap bytes.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the wrapper only counts the bytes it hands out and takes back.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout obligations are passed on as they are.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's to uphold.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A list as the API server pages it: the list's kind and apiVersion, and its items' JSON,
/// whole and as metadata only (`PartialObjectMetadata`, for a client that asks for that).
struct Paged {
    kind: String,
    api_version: String,
    items: Vec<String>,
    metadata: Vec<String>,
}

impl Paged {
    fn new(list: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value = serde_json::from_str(list)?;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let items = || v["items"].as_array().into_iter().flatten();
        Ok(Self {
            kind: text("kind"),
            api_version: text("apiVersion"),
            items: items().map(ToString::to_string).collect(),
            metadata: items().map(|i| metadata_only(i).to_string()).collect(),
        })
    }

    /// Items `from..` up to `limit` of them, with the token of the next page if any.
    fn page(&self, from: usize, limit: usize, metadata: bool) -> String {
        let (kind, api_version, items) = if metadata {
            (
                "PartialObjectMetadataList",
                "meta.k8s.io/v1",
                &self.metadata,
            )
        } else {
            (self.kind.as_str(), self.api_version.as_str(), &self.items)
        };
        let from = from.min(items.len());
        let to = from.saturating_add(limit).min(items.len());
        let next = if to < items.len() {
            to.to_string()
        } else {
            String::new()
        };
        format!(
            r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"resourceVersion":"900001","continue":"{next}"}},"items":[{}]}}"#,
            items[from..to].join(",")
        )
    }
}

/// Lists by plural, paged by `limit` and `continue` as the API server pages them (the watcher
/// asks for 500 at a time); a watch is held open and sends nothing (a quiet cluster).
type Lists = Arc<BTreeMap<&'static str, Paged>>;

/// Serves `lists` on `listener` (bound where its clients are: loopback here, or in the
/// daemon's network namespace); the client is for this process.
async fn serve(
    lists: Lists,
    listener: std::net::TcpListener,
) -> anyhow::Result<(kube::Client, tokio::task::JoinHandle<()>)> {
    async fn answer(
        lists: &Lists,
        plural: &str,
        query: Option<String>,
        headers: HeaderMap,
    ) -> Response {
        let metadata =
            asks_for_metadata_only(headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()));
        let query = query.unwrap_or_default();
        let param = |key: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        };
        if matches!(param("watch"), Some("true" | "1")) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let number = |key: &str| param(key).and_then(|v| v.parse::<usize>().ok());
        match lists.get(plural) {
            Some(list) => {
                let page = list.page(
                    number("continue").unwrap_or(0),
                    number("limit").unwrap_or(usize::MAX),
                    metadata,
                );
                ([("content-type", "application/json")], page).into_response()
            }
            None => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }
    let app = Router::new()
        .route(
            "/apis",
            get(|| async {
                let v1 = serde_json::json!({"groupVersion": "crd.projectcalico.org/v1", "version": "v1"});
                let groups = serde_json::json!({
                    "kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [{"name": "crd.projectcalico.org", "versions": [v1], "preferredVersion": v1}]
                });
                ([("content-type", "application/json")], groups.to_string()).into_response()
            }),
        )
        .route(
            "/api/v1/nodes",
            get(
                |State(l): State<Lists>, RawQuery(q): RawQuery, headers: HeaderMap| async move {
                    answer(&l, "nodes", q, headers).await
                },
            ),
        )
        .route(
            "/apis/crd.projectcalico.org/v1/{plural}",
            get(
                |State(l): State<Lists>,
                 Path(plural): Path<String>,
                 RawQuery(q): RawQuery,
                 headers: HeaderMap| async move { answer(&l, &plural, q, headers).await },
            ),
        )
        .with_state(lists);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let config = kube::Config::new(format!("http://{addr}").parse()?);
    Ok((kube::Client::try_from(config)?, task))
}

/// The objects of each resource as served, in reflector stores: what the agent kept before.
fn as_served(lists: &Lists) -> anyhow::Result<Vec<(ApiResource, reflector::Store<DynamicObject>)>> {
    let mut stores = Vec::new();
    for ar in resources(CalicoGroup::CrdV1) {
        let paged = lists
            .get(ar.plural.as_str())
            .context("a list per resource")?;
        let list: serde_json::Value = serde_json::from_str(&paged.page(0, usize::MAX, false))?;
        let mut writer = reflector::store::Writer::new(ar.clone());
        writer.apply_watcher_event(&watcher::Event::Init);
        for item in list["items"].as_array().into_iter().flatten() {
            let obj: DynamicObject = serde_json::from_value(item.clone())?;
            writer.apply_watcher_event(&watcher::Event::InitApply(obj));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        stores.push((ar, writer.as_reader()));
    }
    Ok(stores)
}

/// A snapshot of `stores` as the agent took one before: every object to JSON and parsed.
fn snapshot_of(
    stores: &[(ApiResource, reflector::Store<DynamicObject>)],
) -> anyhow::Result<Datastore> {
    let mut ds = Datastore::default();
    for (ar, store) in stores {
        let mut objects = store.state();
        objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        load_objects(&mut ds, ar, objects.iter().map(AsRef::as_ref))?;
    }
    Ok(ds)
}

/// A network namespace of ours holding node 0's real VXLAN state for the cluster; deleted on
/// drop.
struct Netns(String);

impl Netns {
    fn new(cluster: Cluster) -> anyhow::Result<Self> {
        let ns = Self(format!("cdpb-ks{}", std::process::id() % 10000));
        xtask::sh::run(&["ip", "netns", "add", &ns.0])?;
        xtask::sh::run(&["ip", "-n", &ns.0, "link", "set", "lo", "up"])?;
        cluster.program(&ns.0)?;
        Ok(ns)
    }

    /// Runs `f` on a thread inside the namespace: sockets it binds and processes it starts
    /// are in there.
    fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path)?;
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = xtask::sh::run(&["ip", "netns", "del", &self.0]);
    }
}

/// `agent run --kube` (the release binary, no eBPF) in a namespace holding node 0's real state,
/// against the API server serving `lists` there: its resident memory (VmRSS, VmHWM in MiB) once
/// it has verified for ten seconds.
async fn daemon_rss(cluster: Cluster, lists: Lists) -> anyhow::Result<(f64, f64)> {
    let ns = Netns::new(cluster)?;
    let listener = ns.within(|| Ok(std::net::TcpListener::bind("127.0.0.1:0")?))?;
    let port = listener.local_addr()?.port();
    let (_, server) = serve(lists, listener).await?;
    let dir = std::env::temp_dir().join(&ns.0);
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: bench\n\
             clusters: [{{name: bench, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: bench, user: {{}}}}]\n\
             contexts: [{{name: bench, context: {{cluster: bench, user: bench}}}}]\n"
        ),
    )?;
    let socket = dir.join("agent.sock");
    let log = dir.join("agent.log");
    let agent = env!("CARGO_BIN_EXE_agent");
    let (k, sock, stderr) = (
        kubeconfig.clone(),
        socket.clone(),
        std::fs::File::create(&log)?,
    );
    let mut child = ns.within(move || {
        Ok(std::process::Command::new(agent)
            .args([
                "run",
                "--kube",
                "--no-ebpf",
                "--node-name",
                &Cluster::local(),
            ])
            .args(["--listen", "127.0.0.1:0", "--grace", "0"])
            .arg("--socket")
            .arg(&sock)
            .env("KUBECONFIG", &k)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()?)
    })?;
    let result = async {
        // The local API answers once the first lists are in and the first verification ran.
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(120),
                "agent run never answered"
            );
            anyhow::ensure!(child.try_wait()?.is_none(), "agent run exited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        anyhow::ensure!(child.try_wait()?.is_none(), "agent run exited");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map(|k| k / 1024.0)
                .context(format!("{field} in /proc/<pid>/status"))
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }
    .await
    .with_context(|| std::fs::read_to_string(&log).unwrap_or_default());
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn median_ms(mut f: impl FnMut() -> anyhow::Result<Datastore>) -> anyhow::Result<(f64, usize)> {
    let mut times = Vec::with_capacity(RUNS);
    let mut nodes = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        let ds = f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        nodes = ds.nodes.len();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[RUNS / 2], nodes))
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut md = String::from(
        "| nodes | lists served before / now (MiB of JSON) | store as served, before (MiB of heap) | store now (MiB of heap) | now / before | snapshot before (ms) | snapshot now (ms) | now / before | `agent run --kube` RSS / peak (MiB) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for n in SIZES {
        let lists: Lists = Arc::new(
            Cluster::new(n)
                .kube_lists()
                .into_iter()
                .map(|(plural, list)| Ok((plural, Paged::new(&list)?)))
                .collect::<anyhow::Result<_>>()?,
        );
        // Now Nodes are served as metadata only.
        let bytes = |items: &[String]| items.iter().map(String::len).sum::<usize>();
        let served: usize = lists.values().map(|l| bytes(&l.items)).sum();
        let served_now: usize = lists
            .iter()
            .map(|(plural, l)| {
                bytes(if *plural == "nodes" {
                    &l.metadata
                } else {
                    &l.items
                })
            })
            .sum();
        let (kept, now_ms, before, before_ms, (rss, peak)) = rt.block_on(async {
            let loopback = std::net::TcpListener::bind("127.0.0.1:0")?;
            let (client, server) = serve(lists.clone(), loopback).await?;
            let mark = LIVE.load(Ordering::Relaxed);
            let kds = KubeDatastore::start(&client, CalicoGroup::CrdV1);
            kds.ready(Duration::from_secs(120)).await?;
            // Let the page buffers of the first lists go.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let kept = LIVE.load(Ordering::Relaxed).saturating_sub(mark);
            let (now_ms, nodes) = median_ms(|| Ok(kds.snapshot()?))?;
            anyhow::ensure!(nodes == n as usize + 1, "{nodes} nodes in the snapshot");
            drop(kds);
            server.abort();
            // Let the aborted watchers' tasks go before the next mark.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mark = LIVE.load(Ordering::Relaxed);
            let stores = as_served(&lists)?;
            let before = LIVE.load(Ordering::Relaxed).saturating_sub(mark);
            let (before_ms, _) = median_ms(|| snapshot_of(&stores))?;
            drop(stores);
            let rss = daemon_rss(Cluster::new(n), lists.clone()).await?;
            anyhow::Ok((kept, now_ms, before, before_ms, rss))
        })?;
        let _ = writeln!(
            md,
            "| {n} | {:.1} / **{:.1}** | {:.1} | **{:.1}** | {:.2} | {before_ms:.1} | **{now_ms:.1}** | {:.2} | **{rss:.1}** / {peak:.1} |",
            mib(served),
            mib(served_now),
            mib(before),
            mib(kept),
            kept as f64 / before as f64,
            now_ms / before_ms
        );
    }
    print!("{md}");
    Ok(())
}
