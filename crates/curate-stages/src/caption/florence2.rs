//! Florence-2 as a [`CaptionModel`]: the onnx-community export run by
//! `curate_onnx::florence` (768×768 squash, bicubic, ImageNet mean/std;
//! beam search or greedy with per-sequence finishing, exact to
//! transformers' `generate`).

use curate_io::captions::Caption;
use curate_onnx::florence::{prompt_of, Florence, Sequence};
use curate_stage::{BoxError, Result, StageError};
use curate_vision::preprocess::PixelSpec;

use super::model::{CaptionModel, CaptionModelSettings};

/// Its tasks: `<CAPTION>`, `<DETAILED_CAPTION>`, `<MORE_DETAILED_CAPTION>`.
pub const TASKS: &[&str] = &["caption", "detailed", "more-detailed"];

/// A loaded Florence-2 export.
pub struct Florence2 {
    model: Florence,
    variant: String,
}

impl Florence2 {
    pub fn load(settings: &CaptionModelSettings) -> Result<Florence2> {
        let runtime = curate_onnx::init(&settings.runtime_dirs).map_err(StageError::other)?;
        let mut model =
            Florence::load(runtime, &settings.dir, &settings.variant, &settings.options)
                .map_err(StageError::other)?;
        if let Some(b) = settings.num_beams {
            model.gen.num_beams = b.max(1);
        }
        model.gen.max_new_tokens = settings.max_new_tokens.max(1);
        model.gen.kv_cache = settings.kv_cache;
        Ok(Florence2 {
            model,
            variant: settings.variant.clone(),
        })
    }

    /// Tokens between the forced BOS and EOS; whether the limit cut the caption.
    fn count(&self, seq: &Sequence) -> (u32, bool) {
        let gen = &self.model.gen;
        let (eos, pad) = (gen.eos_token_id, gen.pad_token_id);
        let body = seq
            .iter()
            .skip(2)
            .take_while(|&&t| t != eos && t != pad)
            .count();
        (body as u32, 2 + body >= gen.max_new_tokens)
    }
}

impl CaptionModel for Florence2 {
    fn pixel_spec(&self) -> &PixelSpec {
        &self.model.spec
    }

    fn caption(
        &mut self,
        pixels: &[f32],
        n: usize,
        task: &str,
    ) -> std::result::Result<Vec<Caption>, BoxError> {
        let prompt = prompt_of(task).ok_or_else(|| {
            format!(
                "Florence-2 has no task `{task}`; it has {}",
                TASKS.join(", ")
            )
        })?;
        let seqs = self.model.generate(pixels, &vec![prompt; n])?;
        seqs.iter()
            .map(|s| {
                let (num_tokens, truncated) = self.count(s);
                Ok(Caption {
                    text: self.model.decode(s)?,
                    num_tokens,
                    truncated,
                })
            })
            .collect()
    }

    fn num_beams(&self) -> usize {
        self.model.gen.num_beams
    }

    fn max_new_tokens(&self) -> usize {
        self.model.gen.max_new_tokens
    }

    fn config(&self) -> serde_json::Map<String, serde_json::Value> {
        let gen = &self.model.gen;
        let serde_json::Value::Object(map) = serde_json::json!({
            "variant": self.variant,
            "num_beams": gen.num_beams,
            "max_new_tokens": gen.max_new_tokens,
            "no_repeat_ngram_size": gen.no_repeat_ngram_size,
        }) else {
            unreachable!("an object literal")
        };
        map
    }
}
