//! Subcommand `flamegraph`: runs a `ringleader-bench` scenario under
//! `perf record -e cpu-clock -g -F 999`, folds `perf script` with inferno, writes the SVG and
//! appends how it was made (exact command, commit, date) to the folder's README.md.
//!
//! Builds nothing: it profiles the `ringleader-bench` binary next to its own executable (or
//! `--bin`). cpu-clock is a software event, so it works on machines without hardware counters.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use inferno::collapse::Collapse as _;
use inferno::collapse::perf::{Folder, Options as FoldOptions};
use inferno::flamegraph::{self, Options as GraphOptions};
use ringleader_bench::harness::{git_commit, rfc3339};

/// Debian package that provides `perf`.
pub const PERF_PACKAGE: &str = "linux-perf";
/// The README every flamegraph is listed in, next to the SVGs.
pub const README_NAME: &str = "README.md";

/// Flags of `flamegraph`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Output SVG (default `flamegraphs/<name>.svg`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of the flamegraph (default: the bench subcommand, e.g. `baseline`, `sim-swim`).
    #[arg(long)]
    pub name: Option<String>,
    /// Binary to profile (default: `ringleader-bench` next to this executable).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Sampling frequency, Hz.
    #[arg(long, default_value_t = 999)]
    pub freq: u32,
    /// Stack unwinding: `fp` (`perf record -g`, frame pointers) or `dwarf` (deeper stacks
    /// through code built without frame pointers, much larger perf.data).
    #[arg(long, default_value = "fp", value_parser = ["fp", "dwarf"])]
    pub call_graph: String,
    /// Keep the folded stacks next to the SVG (`<name>.folded`).
    #[arg(long)]
    pub keep_folded: bool,
    /// Arguments of `ringleader-bench` (after `--`), e.g. `-- baseline --duration 3s`.
    #[arg(last = true, required = true)]
    pub bench_args: Vec<String>,
}

/// The default name of a flamegraph of `bench_args`: the subcommand words before the first
/// flag, joined by `-` (`sim swim --seed 7` → `sim-swim`).
pub fn default_name(bench_args: &[String]) -> String {
    let words: Vec<&str> = bench_args
        .iter()
        .map(String::as_str)
        .take_while(|a| !a.starts_with('-'))
        .collect();
    if words.is_empty() {
        "bench".to_owned()
    } else {
        words.join("-")
    }
}

/// Quotes `arg` for a POSIX shell when needed.
pub fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn command_line<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(parts: I) -> String {
    parts
        .into_iter()
        .map(|p| shell_quote(&p.as_ref().to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails with a message naming the package when `perf` is missing or unusable.
pub fn check_perf() -> anyhow::Result<String> {
    match Command::new("perf").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => bail!(
            "`perf --version` failed ({}): {}; install a working perf with `apt-get install -y {PERF_PACKAGE}`",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "`perf` is not installed: it comes from Debian's `{PERF_PACKAGE}` package (apt-get install -y {PERF_PACKAGE})"
        ),
        Err(e) => Err(anyhow::Error::new(e).context("running `perf --version`")),
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    let perf_version = check_perf()?;
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()
            .context("finding this executable")?
            .with_file_name("ringleader-bench"),
    };
    if !bin.is_file() {
        bail!(
            "{} does not exist: build it first (cargo build --release -p ringleader-bench) or pass --bin",
            bin.display()
        );
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.bench_args));
    anyhow::ensure!(
        !name.contains(['/', '\\']),
        "--name is a file stem, not a path: {name}"
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("flamegraphs").join(format!("{name}.svg")));
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let work = tempfile::Builder::new()
        .prefix("ringleader-flamegraph-")
        .tempdir()?;
    let data = work.path().join("perf.data");
    let mut record = Command::new("perf");
    record.args(["record", "-e", "cpu-clock"]);
    match args.call_graph.as_str() {
        "dwarf" => record.args(["--call-graph", "dwarf"]),
        _ => record.arg("-g"),
    };
    record
        .arg("-F")
        .arg(args.freq.to_string())
        .arg("-o")
        .arg(&data)
        .arg("--")
        .arg(&bin)
        .args(&args.bench_args);
    let record_line = {
        let mut parts: Vec<String> = vec!["perf".into()];
        parts.extend(record.get_args().map(|a| a.to_string_lossy().into_owned()));
        // The temporary perf.data path is noise in the README.
        parts
            .iter()
            .map(|p| {
                if Path::new(p) == data {
                    "perf.data".to_owned()
                } else {
                    p.clone()
                }
            })
            .collect::<Vec<_>>()
    };
    eprintln!("flamegraph: {}", command_line(&record_line));
    let status = record.status().context("running perf record")?;
    if !status.success() {
        bail!("`perf record` failed ({status}); see its messages above");
    }

    let mut script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf script")?;
    let mut folded = Vec::new();
    {
        let stdout = script.stdout.take().context("perf script has no stdout")?;
        let mut options = FoldOptions::default();
        options.nthreads = 1;
        Folder::from(options)
            .collapse(BufReader::new(stdout), &mut folded)
            .context("folding perf script output")?;
    }
    let status = script.wait()?;
    if !status.success() {
        bail!("`perf script` failed ({status})");
    }
    if folded.is_empty() {
        bail!("perf recorded no samples (is the benchmark too short?)");
    }
    let folded_text = String::from_utf8_lossy(&folded).into_owned();
    // inferno weighs each perf sample by its period: for cpu-clock, nanoseconds of CPU.
    let cpu_ns: u64 = folded_text
        .lines()
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, n)| n.parse::<u64>().ok()))
        .sum();

    let commit = git_commit();
    let date = rfc3339(std::time::SystemTime::now());
    let bench_line = command_line(
        std::iter::once("ringleader-bench".to_owned()).chain(args.bench_args.iter().cloned()),
    );
    let mut options = GraphOptions::default();
    options.title = format!("{bench_line} — cpu-clock, {} Hz", args.freq);
    options.subtitle = Some(format!(
        "commit {commit}, {date}, {:.1} ms of CPU sampled",
        cpu_ns as f64 / 1e6
    ));
    options.count_name = "ns of CPU".to_owned();
    let svg = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
    flamegraph::from_lines(&mut options, folded_text.lines(), io::BufWriter::new(svg))
        .with_context(|| format!("writing {}", out.display()))?;
    if args.keep_folded {
        let folded_path = out.with_extension("folded");
        fs::write(&folded_path, &folded)
            .with_context(|| format!("writing {}", folded_path.display()))?;
    }

    let readme = out_dir.join(README_NAME);
    let invoked = command_line(std::env::args());
    append_readme(
        &readme,
        &out,
        &invoked,
        &command_line(&record_line),
        &commit,
        &date,
        cpu_ns,
        &perf_version,
    )?;
    println!(
        "wrote {} ({:.1} ms of CPU sampled) and listed it in {}",
        out.display(),
        cpu_ns as f64 / 1e6,
        readme.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn append_readme(
    readme: &Path,
    svg: &Path,
    invoked: &str,
    record_line: &str,
    commit: &str,
    date: &str,
    cpu_ns: u64,
    perf_version: &str,
) -> anyhow::Result<()> {
    let existed = readme.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(readme)
        .with_context(|| format!("opening {}", readme.display()))?;
    if !existed {
        writeln!(
            f,
            "# Flamegraphs\n\nCPU flamegraphs of the hot paths, made with `ringleader-tools flamegraph` \
             (perf `cpu-clock` sampling, folded with inferno). One line per SVG: the exact command, \
             the commit and the date.\n"
        )?;
    }
    let file = svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    writeln!(
        f,
        "- [{file}]({file}): `{invoked}` (runs `{record_line}`), commit `{commit}`, {date}, {:.1} ms of CPU sampled, {perf_version}",
        cpu_ns as f64 / 1e6
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_name_takes_the_subcommand_words() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(default_name(&args("baseline --duration 3s")), "baseline");
        assert_eq!(default_name(&args("sim swim --seed 7")), "sim-swim");
        assert_eq!(default_name(&args("--help")), "bench");
    }

    #[test]
    fn shell_quote_quotes_only_when_needed() {
        assert_eq!(shell_quote("--duration"), "--duration");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
