//! `qemu-image`: build, find, probe and boot the builder VM image. Each subcommand is one enum
//! variant and one function; the logic lives in the `qemu_image` library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use qemu_image::boot::{self, BootOptions};
use qemu_image::guest::GuestConfig;
use qemu_image::image::{self, Image};
use qemu_image::probe::{self, Detection, ProbeOptions};
use qemu_image::spec::{Accel, Machine, NetworkMode};

#[derive(Debug, Parser)]
#[command(
    name = "qemu-image",
    version,
    about = "Build, probe and boot the Quarry builder VM image"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the VM image into the cache (or find it there) and print its directory.
    Build(BuildArgs),
    /// Print the current image's directory (fails when there is none or it does not verify).
    Path(PathArgs),
    /// Decide KVM or TCG and microvm or q35 by booting the image; print the result.
    Probe(ProbeArgs),
    /// Print the QEMU command line `boot` would run (for debugging).
    Args(BootArgs),
    /// Boot one VM in the foreground with its console on stdout; Ctrl-C stops it.
    Boot(BootArgs),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Cache directory (default: $QUARRY_CACHE_DIR, $XDG_CACHE_HOME/quarry, ~/.cache/quarry).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The builder-agent binary (default: `builder-agent` next to this program).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The quarry-init binary (default: `quarry-init` next to this program).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Rebuild even if an image with the same inputs exists (reuses the debootstrapped base).
    #[arg(long)]
    force: bool,
    /// Re-run debootstrap even if a base tree for the package list is cached.
    #[arg(long)]
    rebuild_base: bool,
    /// Debian mirror for debootstrap.
    #[arg(long, default_value = image::build::DEFAULT_MIRROR)]
    mirror: String,
}

#[derive(Debug, Args)]
struct PathArgs {
    /// Cache directory (default: as for `build`).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ProbeArgs {
    /// Image directory (default: the current image in the cache).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Accelerator: auto probes.
    #[arg(long, value_enum, default_value_t = AccelArg::Auto)]
    accel: AccelArg,
    /// Machine type: auto probes.
    #[arg(long, value_enum, default_value_t = MachineArg::Auto)]
    machine: MachineArg,
    /// QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
}

#[derive(Debug, Args)]
struct BootArgs {
    /// The guest configuration (JSON, as passed through fw_cfg).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    probe: ProbeArgs,
    /// Guest memory (K, M, G suffixes; binary units).
    #[arg(long, default_value = "2G")]
    memory: String,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Scratch disk size.
    #[arg(long, default_value = "8G")]
    scratch_size: String,
    /// Forward 127.0.0.1:PORT to the guest's SSH port.
    #[arg(long)]
    ssh_port: Option<u16>,
    /// Guest network.
    #[arg(long, value_enum, default_value_t = NetworkArg::Restricted)]
    network: NetworkArg,
    /// A host service (host:port) the guest reaches; repeatable.
    #[arg(long = "service")]
    services: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum MachineArg {
    Auto,
    Microvm,
    Q35,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum NetworkArg {
    Restricted,
    User,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build(&args),
        Command::Path(args) => path(&args),
        Command::Probe(args) => probe(&args),
        Command::Args(args) => args_cmd(&args),
        Command::Boot(args) => boot(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("qemu-image: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `build`: builds or finds the image; prints progress, then its directory.
fn build(args: &BuildArgs) -> anyhow::Result<ExitCode> {
    let beside = |name: &str| -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe().context("finding this program's path")?;
        Ok(exe.with_file_name(name))
    };
    let opts = image::BuildOptions {
        cache: args.cache_dir.clone().unwrap_or_else(image::cache_dir),
        agent: match &args.agent {
            Some(p) => p.clone(),
            None => beside("builder-agent")?,
        },
        init: match &args.init {
            Some(p) => p.clone(),
            None => beside("quarry-init")?,
        },
        force: args.force,
        rebuild_base: args.rebuild_base,
        mirror: args.mirror.clone(),
    };
    let started = std::time::Instant::now();
    let image = image::build(&opts, &mut std::io::stderr().lock())?;
    eprintln!("built in {:.1} s", started.elapsed().as_secs_f64());
    println!("{}", image.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `path`: prints the current image's directory.
fn path(args: &PathArgs) -> anyhow::Result<ExitCode> {
    let cache = args.cache_dir.clone().unwrap_or_else(image::cache_dir);
    println!("{}", image::current(&cache)?.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `probe`: prints the [`Detection`].
fn probe(args: &ProbeArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let d = detect(args)?;
    println!("accel: {}", d.accel.as_str());
    println!("machine: {}", d.machine.as_str());
    match d.tsc_khz {
        Some(khz) => println!("tsc_khz: {khz}"),
        None => println!("tsc_khz: none"),
    }
    for note in &d.notes {
        println!("note: {note}");
    }
    println!("took: {:.1} s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// `args`: prints QEMU's command line, shell-quoted, with `<tmp>` for `boot`'s temporary files.
fn args_cmd(args: &BootArgs) -> anyhow::Result<ExitCode> {
    let opts = boot_options(args)?;
    let (spec, _) = boot::plan(&opts, std::path::Path::new("<tmp>"))?;
    let cmd = qemu_image::vm::command(&spec);
    let words: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| quote(&w.to_string_lossy()))
        .collect();
    // One option and its value per line.
    let mut text = String::new();
    for word in words {
        if word.starts_with('-') && !text.is_empty() {
            text.push_str(" \\\n   ");
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&word);
    }
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// `boot`: runs the VM in the foreground.
fn boot(args: &BootArgs) -> anyhow::Result<ExitCode> {
    let opts = boot_options(args)?;
    eprintln!(
        "qemu-image boot: {} {} image {:?}",
        opts.detection.accel.as_str(),
        opts.detection.machine.as_str(),
        opts.image.dir
    );
    let status = boot::run(&opts, &mut std::io::stdout().lock())?;
    eprintln!("qemu-image boot: qemu exited with {status}");
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(130),
    })
}

fn open_image(dir: Option<&PathBuf>) -> anyhow::Result<Image> {
    Ok(match dir {
        Some(dir) => Image::open(dir)?,
        None => image::current(&image::cache_dir())?,
    })
}

fn detect(args: &ProbeArgs) -> anyhow::Result<Detection> {
    let image = open_image(args.image.as_ref())?;
    let opts = ProbeOptions {
        accel: match args.accel {
            AccelArg::Auto => None,
            AccelArg::Kvm => Some(Accel::Kvm),
            AccelArg::Tcg => Some(Accel::Tcg),
        },
        machine: match args.machine {
            MachineArg::Auto => None,
            MachineArg::Microvm => Some(Machine::Microvm),
            MachineArg::Q35 => Some(Machine::Q35),
        },
        ..ProbeOptions::default()
    };
    Ok(probe::detect(&args.qemu, &image, &opts))
}

fn boot_options(args: &BootArgs) -> anyhow::Result<BootOptions> {
    let text = std::fs::read(&args.config).with_context(|| format!("reading {:?}", args.config))?;
    let config: GuestConfig = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {:?} as a guest configuration", args.config))?;
    let image = open_image(args.probe.image.as_ref())?;
    Ok(BootOptions {
        qemu: args.probe.qemu.clone(),
        detection: detect(&args.probe)?,
        image,
        config,
        memory_mib: parse_size(&args.memory).context("--memory")? >> 20,
        vcpus: args.cpus,
        scratch_bytes: parse_size(&args.scratch_size).context("--scratch-size")?,
        ssh_port: args.ssh_port,
        network: match args.network {
            NetworkArg::Restricted => NetworkMode::Restricted,
            NetworkArg::User => NetworkMode::User,
        },
        services: args.services.clone(),
    })
}

/// `512M`, `2G`, `8g`, `1048576` (bytes): binary units.
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => match c.to_ascii_uppercase() {
            'K' => (&t[..i], 10),
            'M' => (&t[..i], 20),
            'G' => (&t[..i], 30),
            'T' => (&t[..i], 40),
            _ => bail!("unknown size suffix in {text:?}: use K, M, G or T"),
        },
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("invalid size {text:?}"))?;
    n.checked_mul(1 << shift)
        .with_context(|| format!("size {text:?} is too large"))
}

/// Quotes a word for a POSIX shell when needed.
fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
