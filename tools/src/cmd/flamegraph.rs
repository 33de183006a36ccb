//! Subcommand `flamegraph`: runs a `ringleader-bench` scenario under
//! `perf record -e cpu-clock -g -F 999`, folds `perf script` with inferno, writes the SVG and
//! appends how it was made to the folder's README.md: the command as a reader types it in a
//! checkout (`target/release/ringleader-tools flamegraph ... -- <scenario args>`), the
//! commit and the date. Nothing of the maker's machine goes into the README or the SVG:
//! paths outside the checkout are left out (the bench's own `--out`) or written as a fresh
//! temporary directory (`"$(mktemp -d)"`), paths inside it are made relative to it, and
//! `--bin` is left out (a reader profiles the bench next to the tools).
//!
//! perf follows the children the bench forks (`perf record` inherits into child
//! processes unless told not to), so a scenario that starts its nodes as processes of
//! their own (`raft`, whose nodes are `ringleader-bench raft-node`) is profiled whole; each
//! stack starts with its thread's name (a node's shards are `raft-<id>-<shard>`).
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
/// Sampling frequency when `--freq` is not given, Hz.
pub const FREQ_DEFAULT_HZ: u32 = 999;
/// How a fresh temporary directory is written in a command shown to readers.
pub const TEMP_DIR_WORD: &str = "\"$(mktemp -d)\"";

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
    #[arg(long, default_value_t = FREQ_DEFAULT_HZ)]
    pub freq: u32,
    /// Stack unwinding: `fp` (`perf record -g`, frame pointers) or `dwarf` (deeper stacks
    /// through code built without frame pointers, much larger perf.data).
    #[arg(long, default_value = "fp", value_parser = ["fp", "dwarf"])]
    pub call_graph: String,
    /// Keep the folded stacks next to the SVG (`<name>.folded`).
    #[arg(long)]
    pub keep_folded: bool,
    /// One short phrase of what the graph shows, appended to its line in the README.
    #[arg(long)]
    pub note: Option<String>,
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

/// One word of a command shown to readers: literal text (shell-quoted where needed), or
/// shell syntax written as is (a temporary directory made on the spot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    /// Text the shell must see unchanged.
    Lit(String),
    /// Shell syntax, e.g. [`TEMP_DIR_WORD`].
    Shell(String),
}

impl Word {
    fn lit(s: impl Into<String>) -> Word {
        Word::Lit(s.into())
    }
}

/// The words as one line a POSIX shell reads back into them.
pub fn render(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| match w {
            Word::Lit(s) => shell_quote(s),
            Word::Shell(s) => s.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where a path given on the maker's command line lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Inside the checkout: the path relative to its root.
    Checkout(PathBuf),
    /// Outside the checkout (or there is no checkout): the maker's own.
    Elsewhere,
}

/// Where `path` lies: relative paths are taken from `cwd`; `root` is the checkout's root.
pub fn place(path: &Path, cwd: &Path, root: Option<&Path>) -> Place {
    let abs = cwd.join(path);
    match root.and_then(|r| abs.strip_prefix(r).ok()) {
        Some(rel) if !rel.as_os_str().is_empty() => Place::Checkout(rel.to_path_buf()),
        _ => Place::Elsewhere,
    }
}

/// `bench_args` as a reader types them in a checkout. An absolute path inside the checkout
/// becomes relative to its root; outside it, the bench's `--out` (its results folder,
/// which does not change the profile) is left out and any other path becomes
/// [`TEMP_DIR_WORD`]. Relative paths are kept as typed.
pub fn reader_bench_args(bench_args: &[String], cwd: &Path, root: Option<&Path>) -> Vec<Word> {
    let mut words = Vec::with_capacity(bench_args.len());
    let mut i = 0;
    while i < bench_args.len() {
        let arg = &bench_args[i];
        i += 1;
        let is_abs = |v: &str| v.starts_with('/');
        if arg == "--out" && bench_args.get(i).is_some_and(|v| is_abs(v)) {
            let value = &bench_args[i];
            i += 1;
            if let Place::Checkout(rel) = place(Path::new(value), cwd, root) {
                words.push(Word::lit(arg.clone()));
                words.push(Word::lit(rel.to_string_lossy()));
            }
            continue;
        }
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") && is_abs(v) => (Some(f), v),
            _ if is_abs(arg) => (None, arg.as_str()),
            _ => {
                words.push(Word::lit(arg.clone()));
                continue;
            }
        };
        match (place(Path::new(value), cwd, root), flag) {
            (Place::Checkout(rel), None) => words.push(Word::lit(rel.to_string_lossy())),
            (Place::Checkout(rel), Some(f)) => {
                words.push(Word::lit(format!("{f}={}", rel.to_string_lossy())));
            }
            (Place::Elsewhere, Some("--out")) => {}
            (Place::Elsewhere, None) => words.push(Word::Shell(TEMP_DIR_WORD.to_owned())),
            (Place::Elsewhere, Some(f)) => {
                words.push(Word::Shell(format!("{}={TEMP_DIR_WORD}", shell_quote(f))));
            }
        }
    }
    words
}

/// The whole `ringleader-tools flamegraph` command as a reader types it in a checkout: the
/// binary in `target/release`, the flags that differ from the defaults (`--bin` and
/// `--note` never), then `--` and [`reader_bench_args`].
pub fn reader_command(args: &Args, cwd: &Path, root: Option<&Path>) -> Vec<Word> {
    let mut words = vec![
        Word::lit("target/release/ringleader-tools"),
        Word::lit("flamegraph"),
    ];
    let default_name = default_name(&args.bench_args);
    let name = args.name.clone().unwrap_or_else(|| default_name.clone());
    if let Some(out) = &args.out {
        let file = out
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        match place(out, cwd, root) {
            Place::Checkout(rel) if rel == Path::new("flamegraphs").join(format!("{name}.svg")) => {
            }
            Place::Checkout(rel) => {
                words.push(Word::lit("--out"));
                words.push(Word::lit(rel.to_string_lossy()));
            }
            Place::Elsewhere => {
                words.push(Word::lit("--out"));
                words.push(Word::Shell(format!(
                    "{TEMP_DIR_WORD}/{}",
                    shell_quote(&file)
                )));
            }
        }
    }
    if name != default_name {
        words.push(Word::lit("--name"));
        words.push(Word::lit(name));
    }
    if args.freq != FREQ_DEFAULT_HZ {
        words.push(Word::lit("--freq"));
        words.push(Word::lit(args.freq.to_string()));
    }
    if args.call_graph != "fp" {
        words.push(Word::lit("--call-graph"));
        words.push(Word::lit(args.call_graph.clone()));
    }
    if args.keep_folded {
        words.push(Word::lit("--keep-folded"));
    }
    words.push(Word::lit("--"));
    words.extend(reader_bench_args(&args.bench_args, cwd, root));
    words
}

/// The root of the git checkout `cwd` is in, if any.
fn checkout_root() -> Option<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let root = String::from_utf8(out.stdout).ok()?;
    let root = root.trim();
    (!root.is_empty()).then(|| PathBuf::from(root))
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
    check_perf()?;
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
    let cwd = std::env::current_dir().context("finding the current directory")?;
    let root = checkout_root();
    let mut bench_words = vec![Word::lit("ringleader-bench")];
    bench_words.extend(reader_bench_args(&args.bench_args, &cwd, root.as_deref()));
    let bench_line = render(&bench_words);
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
    let line = ReadmeLine {
        command: render(&reader_command(&args, &cwd, root.as_deref())),
        commit,
        date,
        cpu_ns,
        note: args.note.clone(),
    };
    append_readme(&readme, &out, &line)?;
    println!(
        "wrote {} ({:.1} ms of CPU sampled) and listed it in {}",
        out.display(),
        cpu_ns as f64 / 1e6,
        readme.display()
    );
    Ok(())
}

/// What the README says of one SVG: nothing of the maker's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadmeLine {
    /// The command as a reader types it in a checkout ([`reader_command`]).
    pub command: String,
    /// The commit the bench was built from.
    pub commit: String,
    /// When the graph was made (RFC 3339, UTC).
    pub date: String,
    /// CPU time the samples cover, in ns.
    pub cpu_ns: u64,
    /// What the graph shows, in a short phrase (`--note`).
    pub note: Option<String>,
}

impl ReadmeLine {
    /// The README's list item for `file` (the SVG's file name).
    pub fn render(&self, file: &str) -> String {
        let note = self
            .note
            .as_deref()
            .map(|n| format!(". {}", n.trim_end_matches('.')))
            .unwrap_or_default();
        format!(
            "- [{file}]({file}): `{}`, commit `{}`, {}, {:.1} ms of CPU sampled{note}",
            self.command,
            self.commit,
            self.date,
            self.cpu_ns as f64 / 1e6
        )
    }
}

fn append_readme(readme: &Path, svg: &Path, line: &ReadmeLine) -> anyhow::Result<()> {
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
             (perf `cpu-clock` sampling, folded with inferno). One line per SVG: the command as you \
             would type it in a checkout, the commit and the date.\n"
        )?;
    }
    let file = svg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    writeln!(f, "{}", line.render(&file))?;
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

    fn strings(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn bench_args_lose_the_makers_paths() {
        let root = Path::new("/home/someone/ringleader");
        let cwd = root;
        let args = strings(
            "wal --dir /tmp/walrun --out /tmp/walrun/fg2 --duration 5s --seeds-file /home/someone/ringleader/docs/x --log=/var/tmp/l",
        );
        assert_eq!(
            render(&reader_bench_args(&args, cwd, Some(root))),
            "wal --dir \"$(mktemp -d)\" --duration 5s --seeds-file docs/x --log=\"$(mktemp -d)\""
        );
        // Outside any checkout every absolute path is the maker's.
        let args = strings("baseline --out /work/x --dir /work/y");
        assert_eq!(
            render(&reader_bench_args(&args, cwd, None)),
            "baseline --dir \"$(mktemp -d)\""
        );
    }

    #[test]
    fn the_readers_command_names_target_release_and_only_non_default_flags() {
        let root = Path::new("/home/someone/ringleader");
        let args = |out: Option<&str>, name: Option<&str>, bench: &str| Args {
            out: out.map(PathBuf::from),
            name: name.map(String::from),
            bin: Some(PathBuf::from("/work/target-main/release/ringleader-bench")),
            freq: FREQ_DEFAULT_HZ,
            call_graph: "fp".into(),
            keep_folded: false,
            note: Some("a note".into()),
            bench_args: strings(bench),
        };
        let cmd = |a: &Args, cwd: &Path| render(&reader_command(a, cwd, Some(root)));
        assert_eq!(
            cmd(
                &args(
                    Some("/home/someone/ringleader/flamegraphs/wal.svg"),
                    Some("wal"),
                    "wal --duration 5s --out /tmp/fg"
                ),
                Path::new("/elsewhere")
            ),
            "target/release/ringleader-tools flamegraph -- wal --duration 5s"
        );
        assert_eq!(
            cmd(
                &args(
                    Some("flamegraphs/raft-256.svg"),
                    Some("raft-256"),
                    "raft --clients 256"
                ),
                root
            ),
            "target/release/ringleader-tools flamegraph --name raft-256 -- raft --clients 256"
        );
        assert_eq!(
            cmd(&args(Some("/tmp/x/t.svg"), None, "transport"), root),
            "target/release/ringleader-tools flamegraph --out \"$(mktemp -d)\"/t.svg -- transport"
        );
    }

    #[test]
    fn readme_lines_hold_command_commit_date_and_note() {
        let line = ReadmeLine {
            command: "target/release/ringleader-tools flamegraph -- baseline".into(),
            commit: "abc".into(),
            date: "2026-12-02T00:00:00Z".into(),
            cpu_ns: 1_500_000,
            note: Some("what it shows.".into()),
        };
        assert_eq!(
            line.render("baseline.svg"),
            "- [baseline.svg](baseline.svg): `target/release/ringleader-tools flamegraph -- baseline`, commit `abc`, 2026-12-02T00:00:00Z, 1.5 ms of CPU sampled. what it shows"
        );
    }
}
