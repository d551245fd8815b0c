//! Why the `qemu` executor could not prepare or start a VM.

use std::path::PathBuf;

use qemu_image::image::ImageError;

/// Why the `qemu` executor could not prepare or start a VM; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// `QEMU_BINARY` is not an executable file, nor found in `PATH`.
    #[error("QEMU binary {binary:?} not found: run scripts/install-deps.sh or set QEMU_BINARY")]
    MissingQemu {
        /// As configured.
        binary: PathBuf,
    },
    /// A tool QEMU runs for the VM is missing.
    #[error(
        "{tool} not found in PATH (QEMU relays the VM's connections through it): run scripts/install-deps.sh"
    )]
    MissingTool {
        /// The program.
        tool: &'static str,
    },
    /// The VM image could not be opened or failed verification.
    #[error("failed to open the VM image {}: build it with `cargo run -p qemu-image -- build` or set VM_IMAGE", .dir.as_ref().map_or("(current image in the cache)".to_owned(), |d| format!("{d:?}")))]
    Image {
        /// `VM_IMAGE`, or `None` for the cache's current image.
        dir: Option<PathBuf>,
        /// The cause.
        #[source]
        source: ImageError,
    },
    /// `VM_RUN_AS` names no user of this machine.
    #[error(
        "VM_RUN_AS user {user:?} does not exist: create it, set VM_RUN_AS to an existing user, or \
         set VM_RUN_AS to '' to keep QEMU as buildman's user"
    )]
    NoSuchUser {
        /// The user.
        user: String,
        /// Why the lookup failed, when it did not just find nothing.
        #[source]
        source: Option<nix::Error>,
    },
    /// `VM_RUN_AS` is set but buildman cannot switch users.
    #[error(
        "VM_RUN_AS {user:?} needs buildman to run as root (QEMU switches to it with -runas): run \
         buildman as root or set VM_RUN_AS to ''"
    )]
    RunAsNeedsRoot {
        /// The user.
        user: String,
    },
    /// Too little free space on the work root to start another VM.
    #[error(
        "not enough free space in {dir:?} for a VM: {free} bytes free, VM_MIN_FREE_SPACE \
         ({min_free} bytes) needed: free space there, wait for running builds or lower \
         VM_MIN_FREE_SPACE"
    )]
    DiskSpace {
        /// The work root.
        dir: PathBuf,
        /// Bytes available to buildman there.
        free: u64,
        /// `VM_MIN_FREE_SPACE` in bytes.
        min_free: u64,
    },
    /// The free space of the work root could not be read.
    #[error("failed to read the free space of {dir:?}: check that the work directory exists")]
    StatFs {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The accelerator probe task did not deliver a result.
    #[error("the VM accelerator probe failed: set VM_ACCEL and VM_MACHINE, or see the log")]
    Probe,
    /// The services the agent needs cannot be forwarded into the VM.
    #[error(
        "cannot forward the build's services {services:?} into the VM: check SERVER, REGISTRY_HOSTNAME and proxies"
    )]
    Forward {
        /// The services.
        services: Vec<String>,
        /// The cause.
        #[source]
        source: qemu_image::forward::ForwardError,
    },
    /// No port for the debug SSH forward.
    #[error("no free SSH port from {from}: set SSH_PORT to a free range or stop kept debug VMs")]
    SshPort {
        /// `SSH_PORT`.
        from: u16,
        /// The cause.
        #[source]
        source: qemu_image::vm::VmError,
    },
    /// The scratch disk could not be made.
    #[error("failed to create the scratch disk {path:?}: check free space and VOLUME_SIZE")]
    Scratch {
        /// The disk file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: qemu_image::vm::VmError,
    },
    /// The guest configuration could not be written.
    #[error("failed to write the guest configuration {path:?}")]
    GuestConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: qemu_image::vm::VmError,
    },
    /// A blocking preparation step panicked.
    #[error("preparing the VM failed unexpectedly (a task panicked)")]
    Blocking(#[source] tokio::task::JoinError),
    /// QEMU could not be started.
    #[error("failed to start {program:?}: check QEMU_BINARY")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
