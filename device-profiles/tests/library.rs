//! The shipped library as a whole (issue 7): every profile's full cycle is read in the fewest
//! requests its limits allow, and every profile says where its map comes from.

use fivezero_profiles::plan::{minimum_requests, plan_all};
use fivezero_profiles::{Profile, Table, library_dir, load_path};

fn library() -> Vec<Profile> {
    load_path(&library_dir())
        .expect("library")
        .into_iter()
        .map(|(file, loaded)| loaded.unwrap_or_else(|e| panic!("{}: {e:?}", file.display())))
        .collect()
}

/// The fewest requests that read every point of `profile` within its size limit and gap
/// tolerance, by dynamic programming over the points of each table sorted by address: an
/// independent yardstick for the greedy planner (which may also bridge wider gaps between a
/// value and its scale factor, so it can only do as well or better).
fn optimum_within_limits(profile: &Profile) -> usize {
    let limits = profile.limits;
    if limits.single_point {
        return profile.points.len();
    }
    let mut total = 0;
    for table in [Table::Coil, Table::Discrete, Table::Input, Table::Holding] {
        let mut spans: Vec<(u32, u32)> = profile
            .points
            .iter()
            .filter(|p| p.table == table)
            .map(|p| (u32::from(p.address), p.end()))
            .collect();
        if spans.is_empty() {
            continue;
        }
        spans.sort_unstable();
        let limit = u32::from(if table.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        let gap = u32::from(limits.max_gap);
        // best[k]: fewest requests for the first k points.
        let mut best = vec![usize::MAX; spans.len() + 1];
        best[0] = 0;
        for k in 1..=spans.len() {
            // Try the last request holding points j..k, growing it backwards.
            let mut start = u32::MAX;
            let mut end = 0;
            let mut ok = true;
            for j in (0..k).rev() {
                let (s, e) = spans[j];
                // Points j+1..k cover [start, end) up to holes; check the hole after point j.
                if j + 1 < k {
                    let covered_to = spans[..=j].iter().map(|x| x.1).max().unwrap_or(0);
                    let next = spans[j + 1].0;
                    if next > covered_to && next - covered_to > gap {
                        ok = false;
                    }
                }
                start = start.min(s);
                end = end.max(e);
                if !ok || end - start > limit {
                    break;
                }
                if best[j] != usize::MAX {
                    best[k] = best[k].min(best[j] + 1);
                }
            }
        }
        total += best[spans.len()];
    }
    total
}

#[test]
fn every_profile_is_read_in_the_fewest_requests_its_limits_allow() {
    let mut report = Vec::new();
    let mut worse = Vec::new();
    for profile in library() {
        let all: Vec<usize> = (0..profile.points.len()).collect();
        let planned = plan_all(&profile).len();
        let optimum = optimum_within_limits(&profile);
        let bound = minimum_requests(&profile, &all);
        report.push(format!(
            "{:<34} planned {planned:>2}, optimum within size and gap limits {optimum:>2}, size-only bound {bound:>2}",
            profile.id
        ));
        assert!(
            planned >= bound,
            "{}: below the size-only bound",
            profile.id
        );
        if planned > optimum {
            worse.push(format!("{}: {planned} > {optimum}", profile.id));
        }
    }
    println!("{}", report.join("\n"));
    assert!(worse.is_empty(), "{worse:?}");
}

#[test]
fn every_profile_names_its_source_and_templates_say_they_are_templates() {
    for p in library() {
        assert!(p.source.len() > 20, "{}: source {:?}", p.id, p.source);
        if p.id.ends_with("-template") {
            assert!(
                p.model.contains("TEMPLATE") && p.source.contains("template"),
                "{}: a template must say so in model and source",
                p.id
            );
        }
    }
}
