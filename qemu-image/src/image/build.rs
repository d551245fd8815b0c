//! `qemu-image build`: inputs, base tree, kernel, initramfs, root filesystem, manifest.
//!
//! Everything is made in a staging directory next to the final one and renamed into place with
//! the manifest written last, so an image directory either is complete or does not exist.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::cache::{BASE_DIR, DEBS_DIR, IMAGES_DIR, prune, remove_dir_all, set_current};
use super::debs::{self, BUSYBOX_PATH, DebError};
use super::initrd::{InitrdError, InitrdSpec, write_initrd};
use super::inputs::{
    BASE_RECIPE_VERSION, Inputs, PACKAGES_TXT, RECIPE_VERSION, STAGE1_SCRIPT, SUITE,
    base_recipe_sha256, parse_packages, recipe_sha256, sha256_file, sha256_hex,
};
use super::manifest::{KernelInfo, Manifest, file_entry};
use super::rootfs::{self, RootfsError};
use super::{INITRD_FILE, Image, ImageError, KERNEL_FILE, MANIFEST_FILE, ROOTFS_FILE};

/// The Debian mirror debootstrap uses unless told otherwise (the host's apt source).
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The timestamp of every file in the initramfs and the squashfs (2023-11-14), so that the same
/// inputs give the same bytes.
pub const FIXED_MTIME: u64 = 1_700_000_000;
/// The list of installed packages saved next to a base tree.
const BASE_PACKAGES_FILE: &str = "packages.list";

/// What to build from, and where.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The cache directory ([`super::cache_dir`] by default).
    pub cache: PathBuf,
    /// The `builder-agent` binary.
    pub agent: PathBuf,
    /// The `quarry-init` binary.
    pub init: PathBuf,
    /// Rebuild the image even if one with the same inputs exists (the base tree is reused).
    pub force: bool,
    /// Re-run debootstrap even if a base tree for the package list exists.
    pub rebuild_base: bool,
    /// The Debian mirror.
    pub mirror: String,
}

/// Why the image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A binary to put in the image is missing.
    #[error(
        "cannot read {what} {path:?} (build it first: cargo build -p builder-agent -p qemu-image)"
    )]
    Binary {
        /// Which binary.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Resolving, fetching or unpacking a package failed.
    #[error("kernel or busybox package step failed")]
    Deb(#[from] DebError),
    /// Making the root filesystem failed.
    #[error("root filesystem step failed")]
    Rootfs(#[from] RootfsError),
    /// Making the initramfs failed.
    #[error("initramfs step failed")]
    Initrd(#[from] InitrdError),
    /// The finished image does not verify.
    #[error("the new image does not verify")]
    Verify(#[from] ImageError),
    /// A file system step in the cache failed.
    #[error("{what} {path:?} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { what, path, source }
}

/// One line per step with its duration.
struct Progress<'a> {
    out: &'a mut dyn Write,
    started: Instant,
    step: usize,
}

const STEPS: usize = 6;

impl Progress<'_> {
    fn start(&mut self, what: &str) {
        self.step += 1;
        self.started = Instant::now();
        // Progress output is best effort: a closed stdout must not fail the build.
        let _ = write!(self.out, "[{}/{STEPS}] {what} ... ", self.step);
        let _ = self.out.flush();
    }
    fn done(&mut self, note: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let _ = writeln!(
            self.out,
            "{note}{}{secs:.1} s",
            if note.is_empty() { "" } else { ", " }
        );
    }
}

/// A number unique among this process's builds: with the pid it names a build's staging
/// directory, so concurrent builds in one process (parallel tests) never share one.
fn next_build() -> u64 {
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    BUILDS.fetch_add(1, Ordering::Relaxed)
}

/// Builds (or finds) the image for `opts`; returns it verified, pointed to by `current`.
pub fn build(opts: &BuildOptions, out: &mut dyn Write) -> Result<Image, BuildError> {
    let mut p = Progress {
        out,
        started: Instant::now(),
        step: 0,
    };
    std::fs::create_dir_all(&opts.cache).map_err(io("creating", &opts.cache))?;
    // debootstrap wants an absolute --cache-dir.
    let cache = opts
        .cache
        .canonicalize()
        .map_err(io("resolving", &opts.cache))?;
    let images = cache.join(IMAGES_DIR);
    let debs_dir = cache.join(DEBS_DIR);
    std::fs::create_dir_all(&images).map_err(io("creating", &images))?;

    p.start("inputs");
    // Everything is made below one staging directory, renamed to the image id at the end. The
    // binaries are copied in first and hashed there, so a concurrent `cargo build` replacing them
    // cannot make the image disagree with its manifest.
    let staging = images.join(format!(
        ".build-{}.tmp-{}",
        next_build(),
        std::process::id()
    ));
    remove_dir_all(&staging).map_err(io("removing", &staging))?;
    let work = staging.join("work");
    std::fs::create_dir_all(&work).map_err(io("creating", &work))?;
    let snapshot = |what, from: &Path, name: &str| {
        let to = work.join(name);
        std::fs::copy(from, &to)
            .and_then(|_| sha256_file(&to))
            .map(|sha| (to, sha))
            .map_err(|source| BuildError::Binary {
                what,
                path: from.to_path_buf(),
                source,
            })
    };
    let (agent, agent_sha256) = snapshot("the agent binary", &opts.agent, "builder-agent")?;
    let (init, init_sha256) = snapshot("the quarry-init binary", &opts.init, "quarry-init")?;
    let kernel_pkg = match debs::resolve_kernel() {
        Ok(pkg) => pkg,
        Err(first) => {
            // A host without apt lists (fresh container) cannot resolve the kernel: update once.
            let _ = write!(
                p.out,
                "no kernel in apt's lists ({first}): running apt-get update ... "
            );
            let _ = p.out.flush();
            debs::apt_update()?;
            debs::resolve_kernel()?
        }
    };
    let packages = parse_packages(PACKAGES_TXT);
    let package_versions = debs::candidate_versions(&packages)?;
    let inputs = Inputs {
        recipe_version: RECIPE_VERSION,
        base_recipe_version: BASE_RECIPE_VERSION,
        suite: SUITE.to_string(),
        packages,
        kernel_package: kernel_pkg.name.clone(),
        kernel_version: kernel_pkg.version.clone(),
        busybox_version: debs::busybox_version()?,
        agent_sha256,
        init_sha256,
        stage1_sha256: sha256_hex(STAGE1_SCRIPT.as_bytes()),
        recipe_sha256: recipe_sha256(),
        base_recipe_sha256: base_recipe_sha256(),
        package_versions,
    };
    let id = inputs.id();
    let final_dir = images.join(&id);
    if !opts.force
        && final_dir.join(MANIFEST_FILE).is_file()
        && let Ok(image) = Image::open(&final_dir)
    {
        remove_dir_all(&staging).map_err(io("removing", &staging))?;
        p.done(&format!("image {id} exists and verifies, nothing to build"));
        set_current(&images, &id).map_err(io("linking current to", &final_dir))?;
        return Ok(image);
    }
    p.done(&format!("image {id}, kernel {}", kernel_pkg.version));

    p.start("base tree");
    let (base, cached) = base_tree(&cache, &inputs, opts)?;
    p.done(if cached { "cached" } else { "debootstrap" });
    let packages_text = std::fs::read_to_string(base.join(BASE_PACKAGES_FILE))
        .map_err(io("reading", &base.join(BASE_PACKAGES_FILE)))?;

    p.start("kernel");
    let deb = debs::fetch(&kernel_pkg, &debs_dir)?;
    let kernel_root = work.join("kernel");
    let kernel = debs::unpack_kernel(&deb, &kernel_root)?;
    debs::depmod(&kernel_root, &kernel.release)?;
    std::fs::copy(&kernel.vmlinuz, staging.join(KERNEL_FILE))
        .map_err(io("copying", &kernel.vmlinuz))?;
    p.done(&kernel.release);

    p.start("initramfs");
    let initrd_modules = write_initrd(
        &InitrdSpec {
            busybox: Path::new(BUSYBOX_PATH),
            modules_dir: &kernel.modules_dir,
            release: &kernel.release,
            init_script: STAGE1_SCRIPT,
            mtime: FIXED_MTIME,
        },
        &staging.join(INITRD_FILE),
    )?;
    p.done(&format!("{} modules", initrd_modules.len()));

    p.start("squashfs root filesystem");
    let tree = work.join("rootfs");
    rootfs::final_tree(
        &base.join("tree"),
        &tree,
        &kernel.modules_dir,
        &kernel.release,
        &agent,
        &init,
    )?;
    rootfs::mksquashfs(&tree, &staging.join(ROOTFS_FILE), FIXED_MTIME)?;
    remove_dir_all(&work).map_err(io("removing", &work))?;
    p.done("");

    p.start("manifest");
    let mut files = BTreeMap::new();
    for name in [KERNEL_FILE, INITRD_FILE, ROOTFS_FILE] {
        files.insert(name.to_string(), file_entry(&staging.join(name))?);
    }
    let manifest = Manifest {
        id: id.clone(),
        inputs,
        mirror: opts.mirror.clone(),
        packages: packages_text.lines().map(str::to_string).collect(),
        kernel: KernelInfo {
            package: kernel_pkg.name,
            version: kernel_pkg.version,
            release: kernel.release,
            deb_sha256: kernel_pkg.sha256,
        },
        initrd_modules,
        files,
    };
    let manifest_path = staging.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, manifest.to_json()).map_err(io("writing", &manifest_path))?;
    install(&staging, &final_dir, opts.force)?;
    set_current(&images, &id).map_err(io("linking current to", &final_dir))?;
    let pruned = prune(&images).map_err(io("pruning", &images))?;
    let image = Image::open(&final_dir)?;
    let in_use = if pruned.in_use.is_empty() {
        String::new()
    } else {
        format!(", kept {} still in use", pruned.in_use.len())
    };
    p.done(&format!("pruned {} old{in_use}", pruned.deleted.len()));
    Ok(image)
}

/// Renames `staging` to `final_dir`. An existing image is replaced only with `force`; otherwise
/// (another build of the same inputs finished first) it is kept if it verifies.
fn install(staging: &Path, final_dir: &Path, force: bool) -> Result<(), BuildError> {
    if !force && Image::open(final_dir).is_ok() {
        remove_dir_all(staging).map_err(io("removing", staging))?;
    } else if final_dir.exists() {
        let name = final_dir.file_name().unwrap_or_default().to_string_lossy();
        let old = final_dir.with_file_name(format!(
            ".{name}-{}.tmp-old-{}",
            next_build(),
            std::process::id()
        ));
        std::fs::rename(final_dir, &old).map_err(io("moving aside", final_dir))?;
        std::fs::rename(staging, final_dir).map_err(io("installing", final_dir))?;
        remove_dir_all(&old).map_err(io("removing", &old))?;
    } else {
        std::fs::rename(staging, final_dir).map_err(io("installing", final_dir))?;
    }
    Ok(())
}

/// The base tree directory for `inputs` (holding `tree/` and [`BASE_PACKAGES_FILE`]), made with
/// debootstrap unless cached; returns whether it was cached.
fn base_tree(
    cache: &Path,
    inputs: &Inputs,
    opts: &BuildOptions,
) -> Result<(PathBuf, bool), BuildError> {
    let bases = cache.join(BASE_DIR);
    let dir = bases.join(inputs.base_id());
    if !opts.rebuild_base && dir.join(BASE_PACKAGES_FILE).is_file() {
        return Ok((dir, true));
    }
    let staging = bases.join(format!(
        ".{}-{}.tmp-{}",
        inputs.base_id(),
        next_build(),
        std::process::id()
    ));
    remove_dir_all(&staging).map_err(io("removing", &staging))?;
    std::fs::create_dir_all(&staging).map_err(io("creating", &staging))?;
    let tree = staging.join("tree");
    rootfs::debootstrap(
        &tree,
        &inputs.suite,
        &inputs.packages,
        &opts.mirror,
        &cache.join(DEBS_DIR),
    )?;
    let mut list = rootfs::installed_packages(&tree)?.join("\n");
    list.push('\n');
    let list_path = staging.join(BASE_PACKAGES_FILE);
    std::fs::write(&list_path, list).map_err(io("writing", &list_path))?;
    if dir.exists() {
        remove_dir_all(&dir).map_err(io("removing", &dir))?;
    }
    std::fs::rename(&staging, &dir).map_err(io("installing", &dir))?;
    Ok((dir, false))
}
