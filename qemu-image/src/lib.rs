//! The builder VM: its image, its QEMU command line, the accelerator probe, and the guest's init.
//!
//! - [`image`]: `qemu-image build` turns Debian packages plus our two binaries (`builder-agent`,
//!   `quarry-init`) into an [`image::Image`] directory: kernel, stage-1 initramfs, read-only root
//!   filesystem, and a manifest with every input's version and every output's sha256.
//! - [`spec`]: the [`spec::VmSpec`] that describes one VM, and [`cmdline::qemu_args`], the pure
//!   function that turns it into QEMU's argument list.
//! - [`forward`]: how the guest reaches buildman, the registry and proxies through user-mode
//!   networking without seeing anything else of the host.
//! - [`probe`]: KVM or TCG, decided by booting a tiny guest under KVM with a deadline.
//! - [`vm`]: start, supervise and stop one QEMU process; [`boot`]: one VM in the foreground.
//! - [`guest`]: the [`guest::GuestConfig`] passed through `fw_cfg`, and the guest init
//!   (`quarry-init`) that reads it, brings up the guest and runs the agent.
#![warn(missing_docs)]

pub mod boot;
pub mod cmdline;
pub mod forward;
pub mod guest;
pub mod image;
pub mod probe;
pub mod spec;
pub mod vm;
