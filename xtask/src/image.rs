//! `cargo xtask image`: the container image, built for real on a machine with neither a
//! registry nor a Docker engine (shared/DESIGN.md §8).
//!
//! 1. `cargo build --release -p agent`, stripped into the build context as
//!    [`CONTEXT_BINARY`] (`.dockerignore` re-includes exactly that path);
//! 2. the base image [`BASE_IMAGE`]: `debootstrap --variant=minbase bookworm` imported with
//!    `podman import`, made once and reused (buildah and podman share the storage under
//!    /var/lib/containers);
//! 3. `buildah bud --isolation chroot --layers --target runtime` on the workspace's
//!    `Dockerfile` with that base and binary (the OCI-runtime isolation fails on this machine
//!    kind: "cgroups in hybrid mode not supported"). `--layers` caches the apt layer, so a
//!    second run with the same binary takes seconds and yields the same image ID.
//!
//! [`mount`] runs an image without an OCI runtime: `buildah from` + `buildah mount` give its
//! root filesystem; the guard unmounts and removes the working container when dropped.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::sh;

/// The local base image (`FROM ${BASE}`): Debian bookworm, minbase variant.
pub const BASE_IMAGE: &str = "localhost/calico-dataplane-agent-base:bookworm-minbase";
/// The tag `cargo xtask image` gives the image unless told otherwise.
pub const DEFAULT_TAG: &str = "localhost/calico-dataplane-agent:dev";
/// Where the stripped binary goes, relative to the workspace (the build context).
pub const CONTEXT_BINARY: &str = "target/image/agent";
/// The Dockerfile stage that takes a prebuilt binary.
pub const RUNTIME_STAGE: &str = "runtime";

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Tools this needs, and the Debian package that ships each (`cargo xtask setup` installs them).
const TOOLS: &[(&str, &str)] = &[
    ("buildah", "buildah"),
    ("podman", "podman"),
    ("debootstrap", "debootstrap"),
    ("strip", "binutils"),
    ("tar", "tar"),
];

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The full image ID (`sha256:…` stripped).
    pub id: String,
    pub tag: String,
}

/// `cargo xtask image [--tag NAME]`: builds and prints the image ID.
pub fn run(root: &Path, tag: &str) -> anyhow::Result<()> {
    let image = build(root, tag, true)?;
    println!("image {}: {}", image.tag, image.id);
    Ok(())
}

/// Builds the release binary, the base image when it is missing, and the runtime stage with
/// the binary; returns the image. `verbose` streams the tools' output; otherwise it is kept
/// and shown only in the error of a failed step. Runs one at a time per workspace (a lock
/// file under `target/image`).
pub fn build(root: &Path, tag: &str, verbose: bool) -> anyhow::Result<Image> {
    preflight()?;
    let dir = root.join("target/image");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_path = dir.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;

    let step = Step { verbose };
    step.run(
        "building the release binary",
        Command::new(cargo())
            .args(["build", "--release", "-p", "agent", "--manifest-path"])
            .arg(root.join("Cargo.toml")),
    )?;
    let binary = root.join(CONTEXT_BINARY);
    step.run(
        "stripping the binary into the build context",
        Command::new("strip")
            .arg("-o")
            .arg(&binary)
            .arg(root.join("target/release/agent")),
    )?;
    ensure_base(&dir, &step)?;

    let iidfile = dir.join(format!("iid-{}", std::process::id()));
    let revision = sh::run(&["git", "-C", &root.to_string_lossy(), "rev-parse", "HEAD"])
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let result = step.run(
        "buildah bud (runtime stage)",
        Command::new("buildah")
            // --force-rm: no working container is left behind when a step fails.
            .args(["bud", "--isolation", "chroot", "--layers", "--force-rm"])
            .arg("--pull-never")
            .args(["--target", RUNTIME_STAGE])
            .args(["--build-arg", &format!("BASE={BASE_IMAGE}")])
            .args(["--build-arg", &format!("AGENT_BINARY={CONTEXT_BINARY}")])
            .args([
                "--build-arg",
                &format!("VERSION={}", env!("CARGO_PKG_VERSION")),
            ])
            .args(["--build-arg", &format!("REVISION={revision}")])
            .arg("--iidfile")
            .arg(&iidfile)
            .args(["--tag", tag])
            .arg("--file")
            .arg(root.join("Dockerfile"))
            .arg(root),
    );
    let id = std::fs::read_to_string(&iidfile);
    let _ = std::fs::remove_file(&iidfile);
    result?;
    let id = id.with_context(|| format!("reading the image ID from {}", iidfile.display()))?;
    let id = id.trim().trim_start_matches("sha256:").to_string();
    if id.is_empty() {
        bail!("buildah bud wrote no image ID");
    }
    Ok(Image {
        id,
        tag: tag.to_string(),
    })
}

/// The image's root filesystem, mounted through a buildah working container; unmounted and
/// removed on drop (also when a test fails).
pub struct Mounted {
    pub container: String,
    pub rootfs: PathBuf,
}

/// `buildah from` + `buildah mount`: `image`'s root filesystem as a directory, without an OCI
/// runtime. Writes to it go to the working container's own layer, never to the image.
pub fn mount(image: &str) -> anyhow::Result<Mounted> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("cdpa-img-{}-{n}", std::process::id());
    // A crashed earlier process with the same ID may have left one behind.
    let _ = sh::run(&["buildah", "rm", &name]);
    let container = sh::run(&["buildah", "from", "--pull-never", "--name", &name, image])?
        .trim()
        .to_string();
    match sh::run(&["buildah", "mount", &container]) {
        Ok(path) => Ok(Mounted {
            container,
            rootfs: PathBuf::from(path.trim()),
        }),
        Err(e) => {
            let _ = sh::run(&["buildah", "rm", &container]);
            Err(e)
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = sh::run(&["buildah", "umount", &self.container]);
        let _ = sh::run(&["buildah", "rm", &self.container]);
    }
}

fn preflight() -> anyhow::Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(bin, _)| !sh::on_path(bin))
        .map(|(bin, pkg)| format!("{bin} (Debian package {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "cargo xtask image needs {}: run `cargo xtask setup`",
            missing.join(", ")
        );
    }
    // buildah as another user would use that user's own (rootless) storage, where neither
    // the base image nor the built image would be where podman, the tests and the docs look.
    let uid = sh::run(&["id", "-u"])?;
    if uid.trim() != "0" {
        bail!(
            "cargo xtask image needs root (debootstrap, buildah --isolation chroot and the \
             shared /var/lib/containers storage); run it with sudo"
        );
    }
    Ok(())
}

/// The cargo that runs us (`CARGO` under cargo), else the one on PATH.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Makes [`BASE_IMAGE`] unless local storage has it: debootstrap into a scratch directory
/// (removed afterwards, also on failure), then `tar | podman import`.
fn ensure_base(dir: &Path, step: &Step) -> anyhow::Result<()> {
    if sh::ok(&["podman", "image", "exists", BASE_IMAGE]) {
        return Ok(());
    }
    let rootfs = dir.join(format!("base-rootfs-{}", std::process::id()));
    let result = make_base(&rootfs, step);
    if rootfs.exists() {
        // debootstrap leaves no mounts behind on success; on failure it may leave /proc.
        for sub in ["proc", "sys", "dev/pts", "dev"] {
            let p = rootfs.join(sub);
            let _ = sh::run(&["umount", "--lazy", &p.to_string_lossy()]);
        }
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing the scratch root {}", rootfs.display()))?;
    }
    result.context("making the base image")
}

fn make_base(rootfs: &Path, step: &Step) -> anyhow::Result<()> {
    step.run(
        &format!("debootstrap --variant=minbase {SUITE} (about 30 s)"),
        Command::new("debootstrap")
            .args(["--variant=minbase", SUITE])
            .arg(rootfs)
            .arg(MIRROR),
    )?;
    // The image needs neither the downloaded packages nor the package lists (the Dockerfile
    // runs `apt-get update` itself).
    for sub in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let d = rootfs.join(sub);
        for entry in std::fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .flatten()
        {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if step.verbose {
        println!("image: importing {} as {BASE_IMAGE}", rootfs.display());
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "-c", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tar")?;
    let tar_out = tar.stdout.take().context("tar's stdout")?;
    let import = Command::new("podman")
        .args(["import", "--quiet", "-", BASE_IMAGE])
        .stdin(Stdio::from(tar_out))
        .output()
        .context("starting podman import")?;
    let mut tar_err = String::new();
    if let Some(mut e) = tar.stderr.take() {
        let _ = e.read_to_string(&mut tar_err);
    }
    let tar_status = tar.wait().context("waiting for tar")?;
    if !tar_status.success() {
        bail!(
            "tar -C {} -c . failed ({tar_status}): {tar_err}",
            rootfs.display()
        );
    }
    if !import.status.success() {
        bail!(
            "podman import - {BASE_IMAGE} failed ({}): {}",
            import.status,
            String::from_utf8_lossy(&import.stderr).trim()
        );
    }
    Ok(())
}

/// A build step: streamed when verbose, else captured and shown only when it fails.
struct Step {
    verbose: bool,
}

impl Step {
    fn run(&self, what: &str, cmd: &mut Command) -> anyhow::Result<()> {
        let shown = format!(
            "{} {}",
            cmd.get_program().to_string_lossy(),
            cmd.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        if self.verbose {
            println!("image: {what}");
            let status = cmd
                .stdin(Stdio::null())
                .status()
                .with_context(|| format!("{what}: starting `{shown}`"))?;
            if !status.success() {
                bail!("{what}: `{shown}` failed ({status})");
            }
            return Ok(());
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("{what}: starting `{shown}`"))?;
        if !out.status.success() {
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b);
                let lines: Vec<&str> = s.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            bail!(
                "{what}: `{shown}` failed ({}):\n{}\n{}",
                out.status,
                tail(&out.stdout),
                tail(&out.stderr)
            );
        }
        Ok(())
    }
}
