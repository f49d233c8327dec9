//! Helpers for the integration tests in `tests/`: entering a network namespace on a dedicated
//! thread, and labs and namespaces that clean themselves up even when a test panics.
//!
//! These tests need root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN): they create network
//! namespaces, veths, routes and eBPF programs, all under names starting with `cdpt-`.

use std::{fs::File, sync::atomic::AtomicU32};

use agent::observed::{self, ObservedDataplane};
use nix::sched::{CloneFlags, setns};
use xtask::lab::Lab;

/// Prefix of everything the tests create; `cargo xtask test` sweeps leftovers with it.
pub const PREFIX: &str = "cdpt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name for this test process and call: `cdpt-<tag><pid%10000><n>`.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{PREFIX}-{tag}{}{n}", std::process::id() % 10000)
}

/// Runs `f` on a new thread that has entered network namespace `netns` (setns is per
/// thread, so the caller's namespace is never touched), with a single-threaded runtime.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        f(&rt)
    })
    .join()
    .expect("netns thread panicked")
}

/// Reads the observed dataplane inside `netns`, as the agent would on that node.
pub fn observe(netns: &str, node: &str) -> ObservedDataplane {
    let node = node.to_string();
    in_netns(netns, move |rt| rt.block_on(observed::read_live(&node)))
}

/// `ip -n <ns> <args…>`, panicking with the command's error (tests want the stack trace).
pub fn ip(ns: &str, args: &[&str]) {
    xtask::lab::ip(ns, args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// `sysctl -w key=value` inside `ns`, panicking on failure.
pub fn sysctl(ns: &str, key: &str, value: &str) {
    xtask::lab::sysctl(ns, key, value).unwrap_or_else(|e| panic!("{e:#}"));
}

/// A lab that is brought up on creation and torn down on drop.
pub struct LabGuard(pub Lab);

impl LabGuard {
    pub fn up(tag: &str) -> Self {
        let lab = Lab::new(&unique(tag));
        lab.up().expect("lab up");
        Self(lab)
    }

    /// The dual-stack VXLAN lab (IPv4 and IPv6 on every node and pod).
    pub fn dual_stack(tag: &str) -> Self {
        let lab = Lab::dual_stack(&unique(tag));
        lab.up().expect("dual-stack lab up");
        Self(lab)
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        self.0.down();
    }
}

/// Network namespaces created for a test, deleted on drop.
pub struct NetnsGuard(pub Vec<String>);

impl NetnsGuard {
    pub fn new(names: &[&str]) -> Self {
        let mut guard = Self(Vec::new());
        for n in names {
            xtask::sh::run(&["ip", "netns", "add", n]).expect("ip netns add");
            guard.0.push((*n).to_string());
        }
        guard
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = xtask::sh::run(&["ip", "netns", "del", n]);
        }
    }
}
