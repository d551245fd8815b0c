//! `quarry-init`: PID 1 of the Quarry builder VM (see `qemu_image::guest::init`).
//!
//! It refuses to run as anything but PID 1: on a host it would unmount nothing but would signal
//! every process and power the machine off.

use std::process::ExitCode;

fn main() -> ExitCode {
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!(
            "quarry-init: error: must run as PID 1 inside the builder VM (it kills every process \
             and powers off); to debug, boot the image with `qemu-image boot`"
        );
        return ExitCode::from(2);
    }
    qemu_image::guest::init::run()
}
