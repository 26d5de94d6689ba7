//! `curate decode-latents LATENTS -o PNGS --vae ae.safetensors`: latent rows
//! back to PNGs through the VAE (`curate_stages::encode_latents::decode`).

use curate_stages::encode_latents::decode::{decode_latents, DecodeLatentsSettings};

use crate::cli::DecodeLatentsArgs;

pub fn run(args: &DecodeLatentsArgs) -> anyhow::Result<()> {
    let written = decode_latents(&DecodeLatentsSettings {
        input: args.input.clone(),
        output: args.output.clone(),
        vae: args.vae.clone(),
        keys: args.keys.clone(),
        limit: args.limit,
        device: args.device.clone(),
    })?;
    println!(
        "decoded {} latents into {}",
        written.len(),
        args.output.display()
    );
    Ok(())
}
