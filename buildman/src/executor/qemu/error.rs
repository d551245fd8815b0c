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
