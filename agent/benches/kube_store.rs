//! What `agent run --kube` keeps of the Kubernetes datastore at real cluster sizes, and what
//! a new snapshot of it costs: the real kube watchers and reflector stores against an
//! in-process API server on loopback (there is no cluster here) serving 1,000 and 5,000 nodes
//! as the API server lists them (`xtask::cluster::kube_lists`: Kubernetes Nodes with the
//! kubelet's status and managedFields, IPAM blocks with their pods, affinities). The baseline
//! in the same run is a reflector store of the same objects as served, which is what the agent
//! kept before it pruned them. Heap is counted by a global allocator wrapper (live bytes), so
//! the figures are exact rather than RSS estimates. Prints a Markdown table for BENCHMARKS.md;
//! `cargo xtask bench` runs it.

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
    response::{IntoResponse, Response},
    routing::get,
};
use kube::{
    api::{ApiResource, DynamicObject},
    runtime::{reflector, watcher},
};
use xtask::cluster::Cluster;

const SIZES: [u32; 2] = [1_000, 5_000];
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

/// Lists by plural; a watch is held open and sends nothing (a quiet cluster).
type Lists = Arc<BTreeMap<&'static str, String>>;

async fn serve(lists: Lists) -> anyhow::Result<(kube::Client, tokio::task::JoinHandle<()>)> {
    async fn answer(lists: &Lists, plural: &str, query: Option<String>) -> Response {
        if query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1")) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        match lists.get(plural) {
            Some(body) => ([("content-type", "application/json")], body.clone()).into_response(),
            None => axum::http::StatusCode::NOT_FOUND.into_response(),
        }
    }
    let app = Router::new()
        .route(
            "/api/v1/nodes",
            get(|State(l): State<Lists>, RawQuery(q): RawQuery| async move {
                answer(&l, "nodes", q).await
            }),
        )
        .route(
            "/apis/crd.projectcalico.org/v1/{plural}",
            get(
                |State(l): State<Lists>, Path(plural): Path<String>, RawQuery(q): RawQuery| async move {
                    answer(&l, &plural, q).await
                },
            ),
        )
        .with_state(lists);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
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
        let body = lists
            .get(ar.plural.as_str())
            .context("a list per resource")?;
        let list: serde_json::Value = serde_json::from_str(body)?;
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
        "| nodes | lists served (MiB of JSON) | store as served, before (MiB of heap) | store now (MiB of heap) | now / before | snapshot before (ms) | snapshot now (ms) | now / before |\n|---|---|---|---|---|---|---|---|\n",
    );
    for n in SIZES {
        let lists: Lists = Arc::new(Cluster::new(n).kube_lists().into_iter().collect());
        let served: usize = lists.values().map(String::len).sum();
        let (kept, now_ms, before, before_ms) = rt.block_on(async {
            let (client, server) = serve(lists.clone()).await?;
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
            anyhow::Ok((kept, now_ms, before, before_ms))
        })?;
        let _ = writeln!(
            md,
            "| {n} | {:.1} | {:.1} | **{:.1}** | {:.2} | {before_ms:.1} | **{now_ms:.1}** | {:.2} |",
            mib(served),
            mib(before),
            mib(kept),
            kept as f64 / before as f64,
            now_ms / before_ms
        );
    }
    print!("{md}");
    Ok(())
}
