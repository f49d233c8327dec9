use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent directory for {}", ebpf.manifest_path))?;
    // The machine's nightly is installed under the plain name `nightly` with rust-src
    // (`cargo xtask setup` makes sure); aya-build needs it for -Z build-std=core.
    aya_build::build_ebpf(
        [Package {
            name: "agent-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
