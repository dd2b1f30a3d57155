//! Register decoding: every point of every library profile decoded from arbitrary register
//! words (each table filled from the input), never a panic.
#![no_main]

use std::sync::OnceLock;

use fivezero_profiles::codec::{RegisterImage, decode};
use fivezero_profiles::{Profile, Table, load_path};
use libfuzzer_sys::fuzz_target;

fn library() -> &'static [Profile] {
    static LIBRARY: OnceLock<Vec<Profile>> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        load_path(&fivezero_profiles::library_dir())
            .map(|loaded| loaded.into_iter().filter_map(|(_, p)| p.ok()).collect())
            .unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let profiles = library();
    if profiles.is_empty() {
        return;
    }
    let profile = &profiles[usize::from(pick) % profiles.len()];
    let words: Vec<u16> = rest
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    let bits: Vec<bool> = rest.iter().map(|b| b & 1 == 1).collect();
    let mut image = RegisterImage::new();
    // The same words at every address a profile may use: offsets cycle through the input.
    for table in [Table::Holding, Table::Input] {
        for start in (0..=u16::MAX - 200).step_by(4096) {
            if !words.is_empty() {
                let n = words.len().min(125);
                image.put_registers(table, start, &words[..n]);
            }
        }
        for p in &profile.points {
            if p.table == table && !words.is_empty() {
                let at = usize::from(p.address) % words.len();
                let n = (words.len() - at).min(8);
                image.put_registers(table, p.address, &words[at..at + n]);
            }
        }
    }
    for table in [Table::Coil, Table::Discrete] {
        for p in &profile.points {
            if p.table == table && !bits.is_empty() {
                image.put_bits(table, p.address, &bits[..bits.len().min(16)]);
            }
        }
    }
    for i in 0..profile.points.len() {
        let _ = decode(profile, i, &image);
    }
});
