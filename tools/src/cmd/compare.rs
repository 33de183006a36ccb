//! Subcommand `compare`: side-by-side percentiles of `.hgrm` files (or result folders) with
//! each run's ratio to the first, and an optional SVG percentile-spectrum overlay.
//!
//! Folders contribute every `.hgrm` file in them, matched by file name across runs. When all
//! inputs are files they form one comparison. Reads only; never modifies its inputs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use ringleader_bench::harness::{Spectrum, parse_hgrm};
use serde_json::json;

/// The percentiles of the table (label, quantile; 1.0 is the max).
pub const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
    ("max", 1.0),
];
/// The most `.hgrm` files read from one folder.
pub const FILES_PER_FOLDER_MAX: usize = 1024;
/// The largest `.hgrm` file read.
pub const HGRM_BYTES_MAX: u64 = 64 << 20;

/// Flags of `compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// `.hgrm` files or result folders; the first is the reference of the ratios.
    #[arg(required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Draw the percentile spectra as an SVG (one file per histogram name when comparing
    /// folders with several: `<stem>-<name>.svg`).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Names of the runs, comma separated (default: the paths).
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Also print the comparison as one JSON object, last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// One run's spectrum in a comparison.
#[derive(Debug, Clone)]
pub struct RunSpectrum {
    /// Name shown in the table and legend.
    pub label: String,
    /// The parsed file.
    pub spectrum: Spectrum,
}

/// Runs of the same histogram, in input order.
#[derive(Debug, Clone)]
pub struct Group {
    /// File name of the histogram (e.g. `udp_rtt_us.hgrm`).
    pub name: String,
    /// One entry per input; `None` where that input has no such file.
    pub runs: Vec<Option<RunSpectrum>>,
}

/// `value / reference`, when both exist and the reference is not zero.
pub fn ratio(value: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (value, reference) {
        (Some(v), Some(r)) if r > 0.0 => Some(v / r),
        _ => None,
    }
}

/// The table's percentiles of one spectrum.
pub fn percentiles(spectrum: &Spectrum) -> [Option<f64>; PERCENTILES.len()] {
    PERCENTILES.map(|(_, q)| spectrum.value_at_quantile(q))
}

/// Runs `compare`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let labels: Vec<String> = args
        .inputs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            args.labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| p.display().to_string())
        })
        .collect();
    let groups = load_groups(&args.inputs, &labels)?;
    print_table(&groups, &labels);
    if let Some(svg) = &args.svg {
        let many = groups.len() > 1;
        for group in &groups {
            let path = if many {
                suffixed(svg, &group.name)
            } else {
                svg.clone()
            };
            draw_svg(group, &path).with_context(|| format!("drawing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&groups_json(&groups, &labels))?);
    }
    Ok(())
}

fn suffixed(svg: &Path, name: &str) -> PathBuf {
    let stem = svg
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "compare".into());
    let name = name.trim_end_matches(".hgrm");
    svg.with_file_name(format!("{stem}-{name}.svg"))
}

fn read_spectrum(path: &Path) -> anyhow::Result<Spectrum> {
    let len = fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > HGRM_BYTES_MAX {
        bail!("{} is larger than {HGRM_BYTES_MAX} bytes", path.display());
    }
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_hgrm(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Loads the inputs into groups (see the module docs for how they are matched).
pub fn load_groups(inputs: &[PathBuf], labels: &[String]) -> anyhow::Result<Vec<Group>> {
    let all_files = inputs.iter().all(|p| !p.is_dir());
    if all_files {
        let runs = inputs
            .iter()
            .zip(labels)
            .map(|(path, label)| {
                Ok(Some(RunSpectrum {
                    label: label.clone(),
                    spectrum: read_spectrum(path)?,
                }))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let name = inputs
            .first()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![Group { name, runs }]);
    }
    let mut by_name: BTreeMap<String, Vec<Option<RunSpectrum>>> = BTreeMap::new();
    for (index, (input, label)) in inputs.iter().zip(labels).enumerate() {
        let files = if input.is_dir() {
            hgrm_files(input)?
        } else {
            vec![input.clone()]
        };
        if files.is_empty() {
            eprintln!("warning: no .hgrm files in {}", input.display());
        }
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spectrum = match read_spectrum(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("warning: skipping {}: {e:#}", file.display());
                    continue;
                }
            };
            let runs = by_name
                .entry(name)
                .or_insert_with(|| vec![None; inputs.len()]);
            runs[index] = Some(RunSpectrum {
                label: label.clone(),
                spectrum,
            });
        }
    }
    if by_name.is_empty() {
        bail!("no readable .hgrm files in the inputs");
    }
    Ok(by_name
        .into_iter()
        .map(|(name, runs)| Group { name, runs })
        .collect())
}

fn hgrm_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "hgrm") && path.is_file() {
            if files.len() >= FILES_PER_FOLDER_MAX {
                bail!(
                    "more than {FILES_PER_FOLDER_MAX} .hgrm files in {}",
                    dir.display()
                );
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
        None => "-".to_owned(),
    }
}

fn print_table(groups: &[Group], labels: &[String]) {
    let width = labels
        .iter()
        .map(|l| l.len())
        .max()
        .unwrap_or(8)
        .clamp(18, 40);
    for group in groups {
        println!(
            "== {} (values in ms; ratio to the first run) ==",
            group.name
        );
        print!("{:<10}", "");
        for label in labels {
            print!(" {:>width$}", truncate_left(label, width));
        }
        println!();
        let reference = group
            .runs
            .first()
            .and_then(|r| r.as_ref())
            .map(|r| percentiles(&r.spectrum));
        for (row, (name, _)) in PERCENTILES.iter().enumerate() {
            print!("{name:<10}");
            for (i, run) in group.runs.iter().enumerate() {
                let value = run.as_ref().and_then(|r| percentiles(&r.spectrum)[row]);
                let cell = if i == 0 {
                    fmt_value(value)
                } else {
                    match ratio(value, reference.and_then(|p| p[row])) {
                        Some(r) => format!("{} ({r:.2}x)", fmt_value(value)),
                        None => fmt_value(value),
                    }
                };
                print!(" {cell:>width$}");
            }
            println!();
        }
        print!("{:<10}", "count");
        for run in &group.runs {
            let count = run
                .as_ref()
                .map(|r| r.spectrum.count().to_string())
                .unwrap_or_else(|| "-".into());
            print!(" {count:>width$}");
        }
        println!("\n");
    }
}

fn truncate_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        s.to_owned()
    } else {
        format!("…{}", s.chars().skip(n + 1 - width).collect::<String>())
    }
}

/// The comparison as JSON: per group, per run, the percentiles and their ratios to run 0.
pub fn groups_json(groups: &[Group], labels: &[String]) -> serde_json::Value {
    let groups: Vec<_> = groups
        .iter()
        .map(|g| {
            let reference = g.runs.first().and_then(|r| r.as_ref()).map(|r| percentiles(&r.spectrum));
            let runs: Vec<_> = g
                .runs
                .iter()
                .zip(labels)
                .map(|(run, label)| match run {
                    None => json!({"label": label, "missing": true}),
                    Some(r) => {
                        let values = percentiles(&r.spectrum);
                        let mut v = serde_json::Map::new();
                        let mut ratios = serde_json::Map::new();
                        for (i, (name, _)) in PERCENTILES.iter().enumerate() {
                            v.insert((*name).to_owned(), json!(values[i]));
                            ratios.insert((*name).to_owned(), json!(ratio(values[i], reference.and_then(|p| p[i]))));
                        }
                        json!({"label": label, "count": r.spectrum.count(), "values_ms": v, "ratios": ratios})
                    }
                })
                .collect();
            json!({"name": g.name, "runs": runs})
        })
        .collect();
    json!({ "groups": groups })
}

/// x of a quantile on the spectrum plot: 1/(1-q).
fn spectrum_x(q: f64) -> f64 {
    1.0 / (1.0 - q)
}

/// Label of an x position: 1 → "0%", 2 → "50%", 10 → "90%", 1000 → "99.9%".
pub fn x_label(x: f64) -> String {
    let pct = 100.0 * (1.0 - 1.0 / x);
    let text = format!("{pct:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Draws the percentile-spectrum overlay of `group` (x: 1/(1-p) on a log scale, y: ms).
pub fn draw_svg(group: &Group, path: &Path) -> anyhow::Result<()> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = group
        .runs
        .iter()
        .flatten()
        .map(|r| {
            let points = r
                .spectrum
                .rows
                .iter()
                .filter(|row| row.quantile < 1.0)
                .map(|row| (spectrum_x(row.quantile), row.value))
                .collect();
            (r.label.as_str(), points)
        })
        .collect();
    let x_data_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(1.0f64, f64::max);
    let mut x_max = 100.0f64;
    while x_max < x_data_max && x_max < 1e12 {
        x_max *= 10.0;
    }
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.1;
    let mut key_points = vec![1.0, 2.0];
    let mut x = 10.0;
    while x <= x_max {
        key_points.push(x);
        x *= 10.0;
    }

    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency by percentile: {}", group.name),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1.0f64..x_max).log_scale().with_key_points(key_points),
            0.0f64..y_max,
        )
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("Percentile")
        .y_desc("Latency (milliseconds)")
        .x_label_formatter(&|x| x_label(*x))
        .draw()
        .map_err(plot_error)?;
    for (i, (label, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(plot_error)?
            .label(label.to_owned())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_labels_read_like_the_hdrhistogram_plotter() {
        assert_eq!(x_label(1.0), "0%");
        assert_eq!(x_label(2.0), "50%");
        assert_eq!(x_label(10.0), "90%");
        assert_eq!(x_label(100.0), "99%");
        assert_eq!(x_label(1000.0), "99.9%");
        assert_eq!(x_label(10000.0), "99.99%");
        assert_eq!(x_label(1e6), "99.9999%");
    }

    #[test]
    fn ratio_needs_a_positive_reference() {
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }
}
