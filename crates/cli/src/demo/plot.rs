//! `gpuslice demo --plot FILE.png`: each tenant's share of the GPU over the compute phase,
//! beside the share it was promised.
//!
//! Text needs a TrueType font. plotters' own font lookup (font-kit) would bring fontconfig
//! along, so the plot takes the first of a few common fonts found under the usual font
//! directories. Without one (a minimal container) the plot is drawn without its text, and
//! the demo says what to install. The file's name and the font are checked before the demo
//! starts, so that a plot that cannot be drawn costs no wait.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The name the font is registered under with plotters.
const FONT: &str = "gpuslice-plot";
/// Where fonts are looked for, after `$HOME/.local/share/fonts` and `$HOME/.fonts`.
const FONT_DIRS: [&str; 2] = ["/usr/share/fonts", "/usr/local/share/fonts"];
/// Fonts taken first when found, in this order; otherwise any `.ttf` found.
const PREFERRED: [&str; 4] = [
    "DejaVuSans.ttf",
    "LiberationSans-Regular.ttf",
    "NotoSans-Regular.ttf",
    "Ubuntu-R.ttf",
];
/// How deep under a font directory fonts are looked for.
const FONT_DEPTH: usize = 4;
/// The step of the plot's time axis.
pub const STEP_NS: u64 = 200_000_000;
/// The image's size in pixels.
const SIZE: (u32, u32) = (960, 480);

/// The GPU the demo ran on, as the plot's title says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotGpu {
    /// A real one.
    Real,
    /// The simulated GPU: said in the title, so that a plot passed around is not taken
    /// for a measurement on hardware.
    Simulated,
}

/// The plot's title.
pub fn title(gpu: PlotGpu) -> &'static str {
    match gpu {
        PlotGpu::Real => "gpuslice demo: each tenant's share of the GPU",
        PlotGpu::Simulated => "gpuslice demo: each tenant's share of the simulated GPU",
    }
}

/// A plot ready to be drawn: its file and a font registered with plotters.
#[derive(Debug)]
pub struct Plot {
    path: PathBuf,
    /// The font file the text is drawn with; `None`: no text.
    font: Option<PathBuf>,
}

/// The font registered with plotters (it keeps a `&'static` to its bytes), and its file.
static REGISTERED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

impl Plot {
    /// Checks that `path` names a PNG file in a directory that exists, and finds a font.
    pub fn prepare(path: &Path) -> anyhow::Result<Plot> {
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png {
            return Err(anyhow!(
                "--plot {}: the plot is a PNG image; give a file name ending in .png",
                path.display()
            ));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(anyhow!(
                "--plot {}: directory {} does not exist",
                path.display(),
                parent.display()
            ));
        }
        let font = match REGISTERED.get_or_init(register_font) {
            Ok(font) => Some(font.clone()),
            Err(why) => {
                eprintln!(
                    "gpuslice: warning: --plot {}: {why}; the plot will have no text",
                    path.display()
                );
                None
            }
        };
        Ok(Plot {
            path: path.to_path_buf(),
            font,
        })
    }

    /// Where the plot goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Draws each tenant's share over time (`steps`: seconds, then one share per tenant,
    /// as fractions) beside its `promised` share (percent), titled for the GPU it ran on.
    pub fn draw(
        &self,
        gpu: PlotGpu,
        names: &[String],
        promised: &[f64],
        steps: &[(f64, Vec<f64>)],
    ) -> anyhow::Result<()> {
        self.try_draw(gpu, names, promised, steps)
            .with_context(|| format!("could not draw the plot into {}", self.path.display()))
    }

    fn try_draw(
        &self,
        gpu: PlotGpu,
        names: &[String],
        promised: &[f64],
        steps: &[(f64, Vec<f64>)],
    ) -> anyhow::Result<()> {
        let plotting = |e| anyhow!("{e}");
        let end = steps.last().map_or(1.0, |(at, _)| *at).max(0.1);
        let root = BitMapBackend::new(&self.path, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plotting)?;
        let text = self.font.is_some();
        let mut builder = ChartBuilder::on(&root);
        builder.margin(14);
        if text {
            builder
                .caption(title(gpu), (FONT, 22))
                .x_label_area_size(42)
                .y_label_area_size(56);
        }
        let mut chart = builder
            .build_cartesian_2d(0f64..end, 0f64..100f64)
            .map_err(plotting)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds since both started")
                .y_desc("% of what the GPU does for one alone")
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 15));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(plotting)?;
        for (i, name) in names.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let got = steps
                .iter()
                .filter_map(|(at, shares)| Some((*at, shares.get(i)? * 100.0)));
            chart
                .draw_series(LineSeries::new(got, color.stroke_width(2)))
                .map_err(plotting)?
                .label(format!("{name}: got"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
            if let Some(&share) = promised.get(i) {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0.0, share), (end, share)],
                        8,
                        6,
                        color.stroke_width(1),
                    ))
                    .map_err(plotting)?
                    .label(format!("{name}: promised {share:.0}%"))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            }
        }
        if !text {
            root.present().map_err(plotting)?;
            return Ok(());
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(plotting)?;
        root.present().map_err(plotting)?;
        Ok(())
    }
}

/// Registers the first usable font found with plotters; its file, or why there is none.
fn register_font() -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        dirs.push(home.join(".local/share/fonts"));
        dirs.push(home.join(".fonts"));
    }
    dirs.extend(FONT_DIRS.iter().map(PathBuf::from));
    let mut found = Vec::new();
    for dir in &dirs {
        collect_fonts(dir, FONT_DEPTH, &mut found);
    }
    found.sort_by_key(|path| {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        (
            PREFERRED
                .iter()
                .position(|p| *p == name)
                .unwrap_or(PREFERRED.len()),
            path.clone(),
        )
    });
    for path in found {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        // plotters keeps the font for the rest of the program: it is read once, and leaked
        // on purpose.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
            return Ok(path);
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "no TrueType font (.ttf) to write its text with under {}; install one (Debian and \
         Ubuntu: apt-get install fonts-dejavu-core)",
        searched.join(", ")
    ))
}

/// Adds the `.ttf` files under `dir`, `depth` levels down, to `found`.
fn collect_fonts(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.map_while(Result::ok) {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 0 {
            collect_fonts(&path, depth - 1, found);
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ttf"))
        {
            found.push(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_png_in_an_existing_directory_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let e = Plot::prepare(&dir.path().join("shares.svg")).unwrap_err();
        assert!(e.to_string().contains("ending in .png"), "{e}");
        let e = Plot::prepare(&dir.path().join("missing/shares.png")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn without_a_font_the_plot_is_drawn_without_text() {
        let dir = tempfile::tempdir().unwrap();
        let plot = Plot {
            path: dir.path().join("shares.png"),
            font: None,
        };
        let steps = vec![(0.2, vec![0.3, 0.7]), (0.4, vec![0.29, 0.71])];
        let names = ["a".to_string(), "b".to_string()];
        plot.draw(PlotGpu::Simulated, &names, &[30.0, 70.0], &steps)
            .unwrap();
        let png = std::fs::read(plot.path()).unwrap();
        assert_eq!(png[..8], *b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn the_title_says_when_the_gpu_is_simulated() {
        assert!(title(PlotGpu::Simulated).contains("simulated GPU"));
        assert!(!title(PlotGpu::Real).contains("simulated"));
    }

    #[test]
    fn fonts_are_found_below_a_directory_and_nothing_else_is() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("truetype/dejavu");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("DejaVuSans.ttf"), b"").unwrap();
        std::fs::write(deep.join("README"), b"").unwrap();
        let mut found = Vec::new();
        collect_fonts(dir.path(), FONT_DEPTH, &mut found);
        assert_eq!(found, [deep.join("DejaVuSans.ttf")]);
        let mut shallow = Vec::new();
        collect_fonts(dir.path(), 0, &mut shallow);
        assert!(shallow.is_empty());
    }
}
