//! Florence-2 captioning over the onnx-community export (Xiao et al. 2023,
//! "Florence-2: Advancing a Unified Representation for a Variety of Vision
//! Tasks"; export layout of `onnx-community/Florence-2-base`).
//!
//! Four ONNX files: `vision_encoder` (`pixel_values` → `image_features`),
//! `embed_tokens` (`input_ids` → `inputs_embeds`), `encoder_model`
//! (`attention_mask`, `inputs_embeds` → `last_hidden_state`) and the merged
//! decoder (`use_cache_branch`, `past_key_values.*` → `logits`,
//! `present.*`). The encoder input is the image features followed by the
//! prompt embeddings, its mask ones over the image followed by the prompt
//! mask. The first decoder step runs without cache; later steps feed the
//! decoder presents back, and keep the first step's encoder (cross-attention)
//! keys and values, whose later presents are dummies.
//!
//! Decoding follows transformers 4.57's `generate` for this model exactly:
//! greedy search, or the vectorised beam search (`_beam_search`), with the
//! logits processors the generation config builds (no-repeat n-gram,
//! forced BOS after the decoder start, forced EOS at the length limit),
//! length penalty and early stopping. Log-softmax is computed in f64 and
//! rounded to f32, sums of log-probabilities in f32, as torch does.

use std::path::{Path, PathBuf};

use curate_vision::preprocess::{PixelSpec, IMAGENET_MEAN, IMAGENET_STD};

use crate::session::{Input, Model, ModelOptions, ShapedF32};
use crate::{OnnxError, Runtime};

/// The caption tasks and their prompts (Florence-2's processor expands the task tokens to these).
pub const TASKS: &[(&str, &str, &str)] = &[
    ("caption", "<CAPTION>", "What does the image describe?"),
    (
        "detailed",
        "<DETAILED_CAPTION>",
        "Describe in detail what is shown in the image.",
    ),
    (
        "more-detailed",
        "<MORE_DETAILED_CAPTION>",
        "Describe with a paragraph what is shown in the image.",
    ),
];

/// The prompt of a task name (`caption`, `detailed`, `more-detailed`) or task token.
pub fn prompt_of(task: &str) -> Option<&'static str> {
    TASKS
        .iter()
        .find(|(name, token, _)| *name == task || *token == task)
        .map(|t| t.2)
}

/// Generation settings (the model's `generation_config.json`, then flags).
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    pub decoder_start_token_id: i64,
    pub forced_bos_token_id: Option<i64>,
    pub forced_eos_token_id: Option<i64>,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    pub no_repeat_ngram_size: usize,
    pub num_beams: usize,
    pub early_stopping: bool,
    pub length_penalty: f32,
    pub max_new_tokens: usize,
    /// Feed the decoder its own keys/values (true) or rerun it on the whole sequence each step.
    pub kv_cache: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            decoder_start_token_id: 2,
            forced_bos_token_id: Some(0),
            forced_eos_token_id: Some(2),
            eos_token_id: 2,
            pad_token_id: 1,
            no_repeat_ngram_size: 3,
            num_beams: 3,
            early_stopping: true,
            length_penalty: 1.0,
            max_new_tokens: 1024,
            kv_cache: true,
        }
    }
}

impl GenConfig {
    /// Reads `generation_config.json` over the defaults.
    pub fn from_json(json: &serde_json::Value) -> GenConfig {
        let mut g = GenConfig::default();
        let int = |k: &str| json.get(k).and_then(|v| v.as_i64());
        if let Some(v) = int("decoder_start_token_id") {
            g.decoder_start_token_id = v;
        }
        if let Some(v) = json.get("forced_bos_token_id") {
            g.forced_bos_token_id = v.as_i64();
        }
        if let Some(v) = json.get("forced_eos_token_id") {
            g.forced_eos_token_id = v.as_i64();
        }
        if let Some(v) = int("eos_token_id") {
            g.eos_token_id = v;
        }
        if let Some(v) = int("pad_token_id") {
            g.pad_token_id = v;
        }
        if let Some(v) = int("no_repeat_ngram_size") {
            g.no_repeat_ngram_size = v.max(0) as usize;
        }
        if let Some(v) = int("num_beams") {
            g.num_beams = v.max(1) as usize;
        }
        if let Some(v) = json.get("early_stopping").and_then(|v| v.as_bool()) {
            g.early_stopping = v;
        }
        if let Some(v) = json.get("length_penalty").and_then(|v| v.as_f64()) {
            g.length_penalty = v as f32;
        }
        g
    }
}

/// One generated sequence: the decoder start, the forced BOS, the tokens,
/// EOS, then padding (as `generate` returns it).
pub type Sequence = Vec<i64>;

/// Prompt token ids and their attention masks, one row per prompt.
pub type Prompts = (Vec<Vec<i64>>, Vec<Vec<i64>>);

/// The four sessions, the tokenizer and the preprocessing of an export.
pub struct Florence {
    vision: Model,
    embed: Model,
    encoder: Model,
    decoder: Model,
    pub tokenizer: tokenizers::Tokenizer,
    pub spec: PixelSpec,
    pub gen: GenConfig,
    pub dir: PathBuf,
    /// Decoder layers, attention heads, head size (from the past tensors).
    layers: usize,
    heads: i64,
    head_dim: i64,
    vocab: usize,
}

/// Decoder self- and cross-attention keys/values per layer: (shape, data).
struct Cache {
    decoder: Vec<[ShapedF32; 2]>,
    encoder: Vec<[ShapedF32; 2]>,
}

fn locate(dir: &Path, name: &str) -> Result<PathBuf, OnnxError> {
    let candidates = [dir.join("onnx").join(name), dir.join(name)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| OnnxError::MissingFile {
            dir: dir.to_path_buf(),
            expected: format!("onnx/{name} (or {name})"),
            found: crate::vision::list_dir(dir),
        })
}

impl Florence {
    /// Loads an export folder; `variant` picks e.g. `_fp16` files (`decoder_model_merged_fp16.onnx`).
    pub fn load(
        rt: &Runtime,
        dir: &Path,
        variant: &str,
        options: &ModelOptions,
    ) -> Result<Florence, OnnxError> {
        let file = |base: &str| locate(dir, &format!("{base}{variant}.onnx"));
        let (vision_p, embed_p, encoder_p, decoder_p) = (
            file("vision_encoder")?,
            file("embed_tokens")?,
            file("encoder_model")?,
            file("decoder_model_merged")?,
        );
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(OnnxError::MissingFile {
                dir: dir.to_path_buf(),
                expected: "tokenizer.json".into(),
                found: crate::vision::list_dir(dir),
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| OnnxError::Config {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let files = crate::vision::ModelFiles {
            dir: dir.to_path_buf(),
            onnx: vision_p.clone(),
            preprocessor: [dir.join("preprocessor_config.json")]
                .into_iter()
                .find(|p| p.is_file()),
            id: String::new(),
        };
        let spec = files.pixel_spec(PixelSpec::squash(768, IMAGENET_MEAN, IMAGENET_STD))?;
        let gen_path = dir.join("generation_config.json");
        let gen = match std::fs::read_to_string(&gen_path) {
            Ok(t) => {
                GenConfig::from_json(&serde_json::from_str(&t).map_err(|e| OnnxError::Config {
                    path: gen_path.clone(),
                    message: e.to_string(),
                })?)
            }
            Err(_) => GenConfig::default(),
        };
        let vision = Model::load(rt, &vision_p, options)?;
        vision.expect(&["pixel_values"], &["image_features"])?;
        let embed = Model::load(rt, &embed_p, options)?;
        embed.expect(&["input_ids"], &["inputs_embeds"])?;
        let encoder = Model::load(rt, &encoder_p, options)?;
        encoder.expect(&["attention_mask", "inputs_embeds"], &["last_hidden_state"])?;
        let decoder = Model::load(rt, &decoder_p, options)?;
        decoder.expect(
            &[
                "encoder_attention_mask",
                "encoder_hidden_states",
                "inputs_embeds",
                "use_cache_branch",
                "past_key_values.0.decoder.key",
            ],
            &["logits", "present.0.decoder.key"],
        )?;
        let layers = (0..)
            .take_while(|i| {
                decoder
                    .tensor(&format!("past_key_values.{i}.decoder.key"))
                    .is_some()
            })
            .count();
        let mut names: Vec<String> = Vec::new();
        for i in 0..layers {
            for side in ["decoder", "encoder"] {
                for kv in ["key", "value"] {
                    names.push(format!("past_key_values.{i}.{side}.{kv}"));
                }
            }
        }
        let wanted: Vec<&str> = names.iter().map(String::as_str).collect();
        decoder.expect(&wanted, &[])?;
        let shape = decoder
            .tensor("past_key_values.0.decoder.key")
            .and_then(|t| t.tensor.as_ref().map(|(_, s)| s.clone()))
            .unwrap_or_default();
        let (heads, head_dim) = match shape.as_slice() {
            [_, h, _, d] if *h > 0 && *d > 0 => (*h, *d),
            _ => {
                return Err(OnnxError::Tensor {
                    path: decoder_p.clone(),
                    what: "input",
                    expected: "`past_key_values.0.decoder.key` [batch, heads, length, head_dim] with static heads and head_dim".into(),
                    found: format!("shape {shape:?}"),
                })
            }
        };
        let vocab = decoder
            .tensor("logits")
            .and_then(|t| t.tensor.as_ref().and_then(|(_, s)| s.last().copied()))
            .filter(|v| *v > 0)
            .unwrap_or(tokenizer.get_vocab_size(true) as i64) as usize;
        Ok(Florence {
            vision,
            embed,
            encoder,
            decoder,
            tokenizer,
            spec,
            gen,
            dir: dir.to_path_buf(),
            layers,
            heads,
            head_dim,
            vocab,
        })
    }

    /// Prompt token ids with `<s> … </s>`, right-padded to the longest, and the mask.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Prompts, OnnxError> {
        let mut ids = Vec::with_capacity(prompts.len());
        for p in prompts {
            let enc = self
                .tokenizer
                .encode(*p, true)
                .map_err(|e| OnnxError::Run {
                    path: self.dir.join("tokenizer.json"),
                    message: e.to_string(),
                })?;
            ids.push(enc.get_ids().iter().map(|&i| i as i64).collect::<Vec<_>>());
        }
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mask = ids
            .iter()
            .map(|v| (0..len).map(|i| i64::from(i < v.len())).collect())
            .collect();
        let ids = ids
            .into_iter()
            .map(|mut v| {
                v.resize(len, self.gen.pad_token_id);
                v
            })
            .collect();
        Ok((ids, mask))
    }

    /// Text of a generated sequence, special tokens removed.
    pub fn decode(&self, seq: &[i64]) -> Result<String, OnnxError> {
        let ids: Vec<u32> = seq.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| OnnxError::Run {
                path: self.dir.join("tokenizer.json"),
                message: e.to_string(),
            })
    }

    fn embed(&mut self, ids: &[i64], rows: usize) -> Result<ShapedF32, OnnxError> {
        let len = ids.len() / rows.max(1);
        let mut out = self.embed.run_inputs(
            vec![(
                "input_ids".into(),
                Input::I64(vec![rows as i64, len as i64], ids.to_vec()),
            )],
            &["inputs_embeds"],
        )?;
        Ok(out.remove(0))
    }

    /// Encoder states and mask for `n` images (CHW floats) and their prompts.
    fn encode(
        &mut self,
        pixels: &[f32],
        n: usize,
        ids: &[Vec<i64>],
        mask: &[Vec<i64>],
    ) -> Result<(ShapedF32, Vec<i64>), OnnxError> {
        let (h, w) = self.spec.fixed_hw().unwrap_or((768, 768));
        let feats = self
            .vision
            .run_inputs(
                vec![(
                    "pixel_values".into(),
                    Input::F32(vec![n as i64, 3, h as i64, w as i64], pixels.to_vec()),
                )],
                &["image_features"],
            )?
            .remove(0);
        let (img_tokens, d) = (feats.0[1] as usize, feats.0[2] as usize);
        let l = ids.first().map_or(0, Vec::len);
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let prompt = self.embed(&flat, n)?;
        let s = img_tokens + l;
        let mut embeds = Vec::with_capacity(n * s * d);
        let mut enc_mask = Vec::with_capacity(n * s);
        for (b, m) in mask.iter().enumerate().take(n) {
            embeds.extend_from_slice(&feats.1[b * img_tokens * d..(b + 1) * img_tokens * d]);
            embeds.extend_from_slice(&prompt.1[b * l * d..(b + 1) * l * d]);
            enc_mask.extend(std::iter::repeat_n(1i64, img_tokens));
            enc_mask.extend_from_slice(m);
        }
        let hidden = self
            .encoder
            .run_inputs(
                vec![
                    (
                        "attention_mask".into(),
                        Input::I64(vec![n as i64, s as i64], enc_mask.clone()),
                    ),
                    (
                        "inputs_embeds".into(),
                        Input::F32(vec![n as i64, s as i64, d as i64], embeds),
                    ),
                ],
                &["last_hidden_state"],
            )?
            .remove(0);
        Ok((hidden, enc_mask))
    }

    /// One decoder step for `rows` sequences: the logits of the last
    /// position ([rows × vocab]) and the updated cache. Without a cache (or
    /// with `kv_cache` off) the whole sequences are fed.
    fn step(
        &mut self,
        enc: &ShapedF32,
        enc_mask: &[i64],
        seqs: &[&[i64]],
        cache: Option<Cache>,
    ) -> Result<(Vec<f32>, Option<Cache>), OnnxError> {
        let rows = seqs.len();
        let use_cache = cache.is_some();
        let tokens: Vec<i64> = if use_cache {
            seqs.iter()
                .map(|s| *s.last().expect("sequences start with the decoder start"))
                .collect()
        } else {
            seqs.iter().flat_map(|s| s.iter().copied()).collect()
        };
        let t = tokens.len() / rows;
        let emb = self.embed(&tokens, rows)?;
        let d = enc.0[2];
        let mut inputs: Vec<(String, Input)> = vec![
            (
                "encoder_attention_mask".into(),
                Input::I64(vec![rows as i64, enc.0[1]], enc_mask.to_vec()),
            ),
            (
                "encoder_hidden_states".into(),
                Input::F32(enc.0.clone(), enc.1.clone()),
            ),
            (
                "inputs_embeds".into(),
                Input::F32(vec![rows as i64, t as i64, d], emb.1),
            ),
            (
                "use_cache_branch".into(),
                Input::Bool(vec![1], vec![use_cache]),
            ),
        ];
        let empty =
            |rows: usize| Input::F32(vec![rows as i64, self.heads, 0, self.head_dim], Vec::new());
        for i in 0..self.layers {
            for (side, kv) in [
                ("decoder", 0),
                ("decoder", 1),
                ("encoder", 0),
                ("encoder", 1),
            ] {
                let name = format!("past_key_values.{i}.{side}.{}", ["key", "value"][kv]);
                let value = match &cache {
                    None => empty(rows),
                    Some(c) => {
                        let (shape, data) = if side == "decoder" {
                            &c.decoder[i][kv]
                        } else {
                            &c.encoder[i][kv]
                        };
                        Input::F32(shape.clone(), data.clone())
                    }
                };
                inputs.push((name, value));
            }
        }
        let mut outs: Vec<String> = vec!["logits".into()];
        for i in 0..self.layers {
            for side in ["decoder", "encoder"] {
                for kv in ["key", "value"] {
                    outs.push(format!("present.{i}.{side}.{kv}"));
                }
            }
        }
        let out_names: Vec<&str> = outs.iter().map(String::as_str).collect();
        let mut res = self.decoder.run_inputs(inputs, &out_names)?.into_iter();
        let (lshape, logits) = res.next().expect("logits requested");
        let v = *lshape.last().unwrap_or(&0) as usize;
        let tl = lshape.get(1).copied().unwrap_or(1) as usize;
        let mut last = Vec::with_capacity(rows * v);
        for r in 0..rows {
            let base = (r * tl + tl - 1) * v;
            last.extend_from_slice(&logits[base..base + v]);
        }
        if !self.gen.kv_cache {
            return Ok((last, None));
        }
        let mut decoder = Vec::with_capacity(self.layers);
        let mut encoder = Vec::with_capacity(self.layers);
        let old = cache;
        for i in 0..self.layers {
            let dk = res.next().expect("present requested");
            let dv = res.next().expect("present requested");
            let ek = res.next().expect("present requested");
            let evv = res.next().expect("present requested");
            decoder.push([dk, dv]);
            // Later steps' encoder presents are dummies: keep the first step's.
            match &old {
                None => encoder.push([ek, evv]),
                Some(c) => encoder.push(c.encoder[i].clone()),
            }
        }
        Ok((last, Some(Cache { decoder, encoder })))
    }

    /// Captions `n` images (CHW floats, concatenated) with one prompt each.
    pub fn generate(
        &mut self,
        pixels: &[f32],
        prompts: &[&str],
    ) -> Result<Vec<Sequence>, OnnxError> {
        let n = prompts.len();
        let (ids, mask) = self.tokenize(prompts)?;
        let (enc, enc_mask) = self.encode(pixels, n, &ids, &mask)?;
        if self.gen.num_beams <= 1 {
            self.greedy(&enc, &enc_mask, n)
        } else {
            self.beam_search(enc, enc_mask, n)
        }
    }

    fn max_length(&self) -> usize {
        1 + self.gen.max_new_tokens
    }

    /// transformers' logits processors, in `generate`'s order, on one row.
    fn process(&self, scores: &mut [f32], seq: &[i64]) {
        let n = self.gen.no_repeat_ngram_size;
        let cur = seq.len();
        if n > 0 && cur + 1 >= n {
            let prefix = &seq[cur + 1 - n..];
            for i in 0..=(cur + 1 - n).saturating_sub(1) {
                if i + n > cur {
                    break;
                }
                if &seq[i..i + n - 1] == prefix {
                    scores[seq[i + n - 1] as usize] = f32::NEG_INFINITY;
                }
            }
        }
        if cur == 1 {
            if let Some(bos) = self.gen.forced_bos_token_id {
                scores.fill(f32::NEG_INFINITY);
                scores[bos as usize] = 0.0;
            }
        }
        if cur == self.max_length() - 1 {
            if let Some(eos) = self.gen.forced_eos_token_id {
                scores.fill(f32::NEG_INFINITY);
                scores[eos as usize] = 0.0;
            }
        }
    }

    fn greedy(
        &mut self,
        enc: &ShapedF32,
        enc_mask: &[i64],
        n: usize,
    ) -> Result<Vec<Sequence>, OnnxError> {
        let mut seqs: Vec<Sequence> = vec![vec![self.gen.decoder_start_token_id]; n];
        let mut unfinished = vec![true; n];
        let mut cache: Option<Cache> = None;
        let v = self.vocab;
        loop {
            let views: Vec<&[i64]> = seqs.iter().map(Vec::as_slice).collect();
            let (mut logits, next_cache) = self.step(enc, enc_mask, &views, cache.take())?;
            cache = next_cache;
            for (r, seq) in seqs.iter_mut().enumerate() {
                let row = &mut logits[r * v..(r + 1) * v];
                self.process(row, seq);
                let mut best = 0;
                for (i, &x) in row.iter().enumerate() {
                    if x > row[best] {
                        best = i;
                    }
                }
                let next = if unfinished[r] {
                    best as i64
                } else {
                    self.gen.pad_token_id
                };
                seq.push(next);
                unfinished[r] &= next != self.gen.eos_token_id;
            }
            if !unfinished.iter().any(|&u| u) || seqs[0].len() >= self.max_length() {
                return Ok(seqs);
            }
        }
    }

    fn beam_search(
        &mut self,
        enc: ShapedF32,
        enc_mask: Vec<i64>,
        b: usize,
    ) -> Result<Vec<Sequence>, OnnxError> {
        const NEG: f32 = -1e9;
        let nb = self.gen.num_beams;
        let lp = self.gen.length_penalty;
        let early = self.gen.early_stopping;
        let max_length = self.max_length();
        let (eos, pad) = (self.gen.eos_token_id, self.gen.pad_token_id);
        let v = self.vocab;
        // Repeat every item's encoder states for its beams.
        let (s, d) = (enc.0[1] as usize, enc.0[2] as usize);
        let mut enc_rep = Vec::with_capacity(b * nb * s * d);
        let mut mask_rep = Vec::with_capacity(b * nb * s);
        for i in 0..b {
            for _ in 0..nb {
                enc_rep.extend_from_slice(&enc.1[i * s * d..(i + 1) * s * d]);
                mask_rep.extend_from_slice(&enc_mask[i * s..(i + 1) * s]);
            }
        }
        let enc = (vec![(b * nb) as i64, s as i64, d as i64], enc_rep);
        let keep = 2 * nb;
        let start = self.gen.decoder_start_token_id;
        let mut running = vec![vec![vec![pad; max_length]; nb]; b];
        for item in running.iter_mut() {
            for beam in item.iter_mut() {
                beam[0] = start;
            }
        }
        let mut sequences = running.clone();
        let mut running_scores = vec![vec![0f32; nb]; b];
        for r in running_scores.iter_mut() {
            r[1..].fill(NEG);
        }
        let mut beam_scores = vec![vec![NEG; nb]; b];
        let mut finished = vec![vec![false; nb]; b];
        let mut unsatisfied = vec![true; b];
        let mut running_idx = vec![vec![vec![-1i64; max_length - 1]; nb]; b];
        let mut beam_idx_out = running_idx.clone();
        let mut cache: Option<Cache> = None;
        let mut cur_len = 1usize;
        loop {
            let views: Vec<&[i64]> = running
                .iter()
                .flat_map(|item| item.iter().map(|s| &s[..cur_len]))
                .collect();
            let (logits, next_cache) = self.step(&enc, &mask_rep, &views, cache.take())?;
            cache = next_cache;
            let mut order = Vec::with_capacity(b * nb);
            let mut all_hits = true;
            for i in 0..b {
                // log-probabilities of every beam, processed, plus the beam's running score.
                let mut cand = vec![0f32; nb * v];
                for k in 0..nb {
                    let row = &logits[(i * nb + k) * v..(i * nb + k + 1) * v];
                    let out = &mut cand[k * v..(k + 1) * v];
                    log_softmax(row, out);
                    self.process(out, &running[i][k][..cur_len]);
                    let base = running_scores[i][k];
                    for x in out.iter_mut() {
                        *x += base;
                    }
                }
                let top = topk(&cand, keep);
                let topk_lp: Vec<f32> = top.iter().map(|&j| cand[j]).collect();
                let src: Vec<usize> = top.iter().map(|&j| j / v).collect();
                let ids: Vec<i64> = top.iter().map(|&j| (j % v) as i64).collect();
                let mut topk_seq: Vec<Vec<i64>> =
                    src.iter().map(|&k| running[i][k].clone()).collect();
                let mut topk_bidx: Vec<Vec<i64>> =
                    src.iter().map(|&k| running_idx[i][k].clone()).collect();
                for j in 0..keep {
                    topk_seq[j][cur_len] = ids[j];
                    topk_bidx[j][cur_len - 1] = (src[j] + i * nb) as i64;
                }
                let hits: Vec<bool> = ids
                    .iter()
                    .map(|&t| t == eos || cur_len + 1 >= max_length)
                    .collect();
                all_hits &= hits.iter().all(|&h| h);
                let run_lp: Vec<f32> = topk_lp
                    .iter()
                    .zip(&hits)
                    .map(|(&x, &h)| x + if h { NEG } else { 0.0 })
                    .collect();
                let next = topk(&run_lp, nb);
                running[i] = next.iter().map(|&j| topk_seq[j].clone()).collect();
                running_scores[i] = next.iter().map(|&j| run_lp[j]).collect();
                running_idx[i] = next.iter().map(|&j| topk_bidx[j].clone()).collect();
                // Finished hypotheses.
                let full = early && finished[i].iter().all(|&f| f);
                let denom = ((cur_len + 1 - 1) as f32).powf(lp);
                let fin_lp: Vec<f32> = (0..keep)
                    .map(|j| {
                        let did = hits[j] && j < nb;
                        let mut x = topk_lp[j] / denom;
                        x += if full { NEG } else { 0.0 };
                        x += if unsatisfied[i] { 0.0 } else { NEG };
                        x += if did { 0.0 } else { NEG };
                        x
                    })
                    .collect();
                let m_scores: Vec<f32> = beam_scores[i].iter().chain(&fin_lp).copied().collect();
                let pick = topk(&m_scores, nb);
                let m_seq = |j: usize| {
                    if j < nb {
                        sequences[i][j].clone()
                    } else {
                        topk_seq[j - nb].clone()
                    }
                };
                let m_bidx = |j: usize| {
                    if j < nb {
                        beam_idx_out[i][j].clone()
                    } else {
                        topk_bidx[j - nb].clone()
                    }
                };
                let m_fin = |j: usize| {
                    if j < nb {
                        finished[i][j]
                    } else {
                        hits[j - nb] && j - nb < nb
                    }
                };
                let new_seq: Vec<Vec<i64>> = pick.iter().map(|&j| m_seq(j)).collect();
                let new_bidx: Vec<Vec<i64>> = pick.iter().map(|&j| m_bidx(j)).collect();
                let new_fin: Vec<bool> = pick.iter().map(|&j| m_fin(j)).collect();
                beam_scores[i] = pick.iter().map(|&j| m_scores[j]).collect();
                sequences[i] = new_seq;
                beam_idx_out[i] = new_bidx;
                finished[i] = new_fin;
                order.extend(running_idx[i].iter().map(|beam| beam[cur_len - 1] as usize));
            }
            // Reorder the decoder self-attention cache by the beams' origins.
            if let Some(c) = cache.as_mut() {
                for layer in c.decoder.iter_mut() {
                    for kv in layer.iter_mut() {
                        reorder_rows(kv, &order);
                    }
                }
            }
            cur_len += 1;
            let best_len = (cur_len - 1) as f32;
            for i in 0..b {
                let best_possible = running_scores[i][0] / best_len.powf(lp);
                let min_score = beam_scores[i].iter().copied().fold(f32::INFINITY, f32::min);
                let any_better = (0..nb).any(|k| {
                    let worst = if finished[i][k] { min_score } else { NEG };
                    best_possible > worst
                });
                unsatisfied[i] &= any_better;
            }
            let all_finished = finished.iter().all(|f| f.iter().all(|&x| x));
            let go_on = unsatisfied.iter().any(|&u| u) && !(all_finished && early) && !all_hits;
            if !go_on {
                break;
            }
            if !self.gen.kv_cache {
                cache = None;
            }
        }
        let gen_len = beam_idx_out
            .iter()
            .map(|item| item[0].iter().filter(|&&x| x != -1).count())
            .max()
            .unwrap_or(0);
        Ok(sequences
            .into_iter()
            .map(|item| item[0][..1 + gen_len].to_vec())
            .collect())
    }
}

/// log-softmax in f64, rounded to f32.
fn log_softmax(x: &[f32], out: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| ((v as f64) - m).exp()).sum();
    let lse = m + sum.ln();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v as f64) - lse) as f32;
    }
}

/// Indices of the k largest values, descending; ties to the lower index.
fn topk(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    let k = k.min(x.len());
    let cmp = |a: &usize, b: &usize| x[*b].total_cmp(&x[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx
}

/// Gathers rows (first axis) of a tensor in `order`.
fn reorder_rows(t: &mut ShapedF32, order: &[usize]) {
    let rows = t.0[0] as usize;
    if rows == 0 || t.1.is_empty() {
        return;
    }
    let per = t.1.len() / rows;
    let mut out = Vec::with_capacity(order.len() * per);
    for &r in order {
        out.extend_from_slice(&t.1[r * per..(r + 1) * per]);
    }
    t.0[0] = order.len() as i64;
    t.1 = out;
}
