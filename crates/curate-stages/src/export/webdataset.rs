//! `--format webdataset`: img2dataset's layout, which open_clip, DALI,
//! NeMo Curator and HF datasets read: `SSSSS.tar` per image shard with
//! members `KEY.jpg|png|webp`, `KEY.txt` (the training text) and `KEY.json`
//! (url, key, size, score, tag, every caption, status), plus a sidecar
//! `SSSSS.parquet` and `SSSSS_stats.json`; members are in key order (a
//! shard's samples are held and sorted first). The tar and sidecar are written
//! under temporary names and renamed when the shard is complete.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use curate_io::export::{self, ForeignParquet, Sample};
use curate_stage::{bail, Context, Result, StageError};

use super::{ExportFormat, SampleFormat, ShardWriter, Writes};

pub struct WebDataset;

impl SampleFormat for WebDataset {
    fn begin(&self, out: &Path, shard: u32) -> Result<Box<dyn ShardWriter>> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let stem = format!("{shard:05}");
        super::remove_prefixed(
            out,
            &[format!("{stem}."), format!("{stem}_"), format!(".{stem}.")],
        )?;
        let tar_tmp = out.join(format!(".{stem}.tar.tmp"));
        let file =
            File::create(&tar_tmp).with_context(|| format!("creating {}", tar_tmp.display()))?;
        let sidecar = ForeignParquet::create(
            &out.join(format!(".{stem}.parquet.tmp")),
            &out.join(format!("{stem}.parquet")),
            export::sidecar_schema(),
        )?;
        Ok(Box::new(WdsShard {
            out: out.to_path_buf(),
            stem,
            tar: BufWriter::new(file),
            tar_tmp,
            sidecar,
            count: 0,
            started: Instant::now(),
            start_unix: unix_now(),
        }))
    }

    fn key_order(&self) -> bool {
        true
    }
}

impl ExportFormat for WebDataset {
    fn writes(&self) -> Writes<'_> {
        Writes::Samples(self)
    }

    fn owns(&self, name: &str) -> bool {
        let stem = name.split(['.', '_']).next().unwrap_or("");
        stem.len() == 5 && stem.bytes().all(|b| b.is_ascii_digit())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

struct WdsShard {
    out: PathBuf,
    stem: String,
    tar: BufWriter<File>,
    tar_tmp: PathBuf,
    sidecar: ForeignParquet,
    count: u64,
    started: Instant,
    start_unix: f64,
}

/// One ustar header block for a regular file.
fn header(name: &str, size: usize) -> Result<[u8; 512]> {
    if name.len() > 100 {
        bail!("webdataset: member name `{name}` is longer than tar's 100 bytes");
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 0);
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

impl WdsShard {
    fn member(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let io = |e| StageError::other(e);
        self.tar.write_all(&header(name, data.len())?).map_err(io)?;
        self.tar.write_all(data).map_err(io)?;
        let pad = (512 - data.len() % 512) % 512;
        self.tar.write_all(&vec![0u8; pad]).map_err(io)
    }
}

impl ShardWriter for WdsShard {
    fn write(&mut self, samples: &[Sample]) -> Result<Vec<String>> {
        for s in samples {
            let meta = serde_json::json!({
                "url": s.url,
                "key": s.key,
                "caption": s.text,
                "captions": s.captions.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                "width": s.width,
                "height": s.height,
                "aesthetic_score": s.score,
                "quality_tag": s.tag,
                "status": "success",
                "error_message": null,
            });
            self.member(&format!("{}.{}", s.key, s.ext), &s.bytes)?;
            self.member(
                &format!("{}.txt", s.key),
                s.text.as_deref().unwrap_or("").as_bytes(),
            )?;
            let json = serde_json::to_vec_pretty(&meta).map_err(StageError::other)?;
            self.member(&format!("{}.json", s.key), &json)?;
        }
        let batch = export::sidecar_batch(self.sidecar.schema(), samples)?;
        self.sidecar.write(&batch)?;
        self.count += samples.len() as u64;
        Ok(vec![format!("{}.tar", self.stem); samples.len()])
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let mut s = *self;
        s.tar.write_all(&[0u8; 1024]).map_err(StageError::other)?;
        let file = s
            .tar
            .into_inner()
            .map_err(|e| StageError::other(e.into_error()))?;
        file.sync_all().map_err(StageError::other)?;
        let tar = s.out.join(format!("{}.tar", s.stem));
        std::fs::rename(&s.tar_tmp, &tar).with_context(|| format!("renaming {}", tar.display()))?;
        s.sidecar.finish()?;
        let stats = serde_json::json!({
            "count": s.count,
            "successes": s.count,
            "failed_to_download": 0,
            "failed_to_resize": 0,
            "duration": s.started.elapsed().as_secs_f64(),
            "start_time": s.start_unix,
            "end_time": unix_now(),
            "status_dict": {"success": s.count},
        });
        let dest = s.out.join(format!("{}_stats.json", s.stem));
        let tmp = s.out.join(format!(".{}_stats.json.tmp", s.stem));
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&stats).map_err(StageError::other)?,
        )
        .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("writing {}", dest.display()))?;
        Ok(())
    }
}
