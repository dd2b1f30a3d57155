//! The read planner against worked examples, its invariants over random profiles, and its
//! optimality against a brute-force search over every way to group the points.

use std::collections::BTreeMap;
use std::time::Duration;

use fivezero_model::Kind;
use fivezero_model::metric::{CATALOGUE, Metric};
use fivezero_model::units::Conversion;
use fivezero_profiles::plan::{ReadRequest, due_points, minimum_requests, plan, plan_all};
use fivezero_profiles::{Category, DataType, Point, Profile, ReadLimits, Table, WordOrder};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Building profiles in code.

fn metric() -> &'static Metric {
    CATALOGUE.first().expect("the catalogue is not empty")
}

/// A profile under construction; `add*` return the new point's index.
#[derive(Debug, Clone)]
struct Builder {
    limits: ReadLimits,
    points: Vec<Point>,
}

impl Builder {
    fn new(max_registers: u16, max_bits: u16, max_gap: u16) -> Self {
        Self {
            limits: ReadLimits {
                max_registers,
                max_bits,
                max_gap,
                single_point: false,
            },
            points: Vec::new(),
        }
    }

    fn single_point(mut self) -> Self {
        self.limits.single_point = true;
        self
    }

    /// A reading point.
    fn add(&mut self, table: Table, address: u16, data_type: DataType) -> usize {
        let n = self.points.len();
        self.points.push(Point {
            name: format!("p{n}_{}_{address}", table.as_str()),
            metric: Some(metric()),
            table,
            address,
            data_type,
            order: WordOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            scale_factor: None,
            unit: String::new(),
            conversion: Conversion::IDENTITY,
            kind: Kind::Gauge,
            labels: BTreeMap::new(),
            flags: BTreeMap::new(),
            not_available: Vec::new(),
            interval: None,
            doc_ref: None,
        });
        n
    }

    /// A SunSpec `*_SF` helper point: `i16`, no metric.
    fn add_sf(&mut self, table: Table, address: u16) -> usize {
        let i = self.add(table, address, DataType::I16);
        self.points[i].metric = None;
        i
    }

    /// A reading point scaled by the point `sf`.
    fn add_scaled(&mut self, table: Table, address: u16, data_type: DataType, sf: usize) -> usize {
        let i = self.add(table, address, data_type);
        self.points[i].scale_factor = Some(sf);
        i
    }

    fn build(&self) -> Profile {
        Profile {
            id: "test".into(),
            manufacturer: "Test".into(),
            model: "T1".into(),
            category: Category::Other,
            source: "tests/plan.rs".into(),
            notes: None,
            rated_power_kw: None,
            limits: self.limits,
            points: self.points.clone(),
        }
    }
}

fn req(table: Table, start: u16, count: u16, points: &[usize]) -> ReadRequest {
    ReadRequest {
        table,
        start,
        count,
        points: points.to_vec(),
    }
}

/// `(start, count)` of each request, for layouts where the points are obvious.
fn ranges(reqs: &[ReadRequest]) -> Vec<(Table, u16, u16)> {
    reqs.iter().map(|r| (r.table, r.start, r.count)).collect()
}

// ---------------------------------------------------------------------------------------------
// Worked examples.

/// The Eastron SDM630 input-register layout (f32 values).
fn sdm630(max_registers: u16, max_gap: u16) -> Profile {
    let mut addresses: Vec<u16> = (0..=34).step_by(2).collect();
    addresses.extend([52, 56, 60, 62, 66, 70, 72, 74, 76, 78, 84, 86]);
    addresses.extend((200..=206).step_by(2));
    addresses.push(224);
    addresses.extend((234..=248).step_by(2));
    addresses.extend((342..=362).step_by(2));
    let mut b = Builder::new(max_registers, 2000, max_gap);
    for a in addresses {
        b.add(Table::Input, a, DataType::F32);
    }
    b.build()
}

#[test]
fn an_sdm630_layout_is_read_in_five_requests_split_where_gaps_exceed_the_tolerance() {
    let profile = sdm630(40, 10);
    let reqs = plan_all(&profile);
    assert_eq!(
        reqs,
        vec![
            req(Table::Input, 0, 36, &(0..18).collect::<Vec<_>>()),
            req(Table::Input, 52, 36, &(18..30).collect::<Vec<_>>()),
            req(Table::Input, 200, 8, &[30, 31, 32, 33]),
            req(Table::Input, 224, 26, &(34..43).collect::<Vec<_>>()),
            req(Table::Input, 342, 22, &(43..54).collect::<Vec<_>>()),
        ]
    );
    assert_eq!(minimum_requests(&profile, &(0..54).collect::<Vec<_>>()), 5);
}

#[test]
fn an_sdm630_layout_splits_a_run_at_the_register_limit() {
    let profile = sdm630(30, 10);
    let reqs = plan_all(&profile);
    assert_eq!(
        ranges(&reqs),
        vec![
            (Table::Input, 0, 30),
            (Table::Input, 30, 6),
            (Table::Input, 52, 28),
            (Table::Input, 84, 4),
            (Table::Input, 200, 8),
            (Table::Input, 224, 26),
            (Table::Input, 342, 22),
        ]
    );
}

#[test]
fn an_sdm630_layout_with_no_gap_tolerance_reads_each_contiguous_run() {
    let profile = sdm630(125, 0);
    let reqs = plan_all(&profile);
    assert_eq!(
        ranges(&reqs),
        vec![
            (Table::Input, 0, 36),
            (Table::Input, 52, 2),
            (Table::Input, 56, 2),
            (Table::Input, 60, 4),
            (Table::Input, 66, 2),
            (Table::Input, 70, 10),
            (Table::Input, 84, 4),
            (Table::Input, 200, 8),
            (Table::Input, 224, 2),
            (Table::Input, 234, 16),
            (Table::Input, 342, 22),
        ]
    );
    let all: Vec<usize> = (0..profile.points.len()).collect();
    assert_eq!(minimum_requests(&profile, &all), 3);
}

/// A SunSpec inverter block (model 103 style, holding registers from 40071), with the `*_SF`
/// registers a few registers after their values and unmapped registers in between.
struct SunSpec {
    profile: Profile,
    a: usize,
    a_sf: usize,
    w: usize,
    w_sf: usize,
    wh: usize,
    wh_sf: usize,
    tmp: usize,
    tmp_sf: usize,
    st: usize,
}

fn sunspec(max_gap: u16) -> SunSpec {
    let h = Table::Holding;
    let base = 40_071;
    let mut b = Builder::new(125, 2000, max_gap);
    let a_sf = b.add_sf(h, base + 4);
    let a = b.add_scaled(h, base, DataType::U16, a_sf);
    for k in 1..=3 {
        b.add_scaled(h, base + k, DataType::U16, a_sf);
    }
    let w_sf = b.add_sf(h, base + 13);
    let w = b.add_scaled(h, base + 12, DataType::I16, w_sf);
    let wh_sf = b.add_sf(h, base + 24);
    let wh = b.add_scaled(h, base + 22, DataType::U32, wh_sf);
    let tmp_sf = b.add_sf(h, base + 35);
    let tmp = b.add_scaled(h, base + 31, DataType::I16, tmp_sf);
    let st = b.add(h, base + 36, DataType::U16);
    SunSpec {
        profile: b.build(),
        a,
        a_sf,
        w,
        w_sf,
        wh,
        wh_sf,
        tmp,
        tmp_sf,
        st,
    }
}

#[test]
fn sunspec_values_are_read_with_their_scale_factors_which_the_planner_adds() {
    let s = sunspec(0);
    let reqs = plan(&s.profile, &[s.a, s.w, s.wh, s.tmp]);
    let h = Table::Holding;
    assert_eq!(
        reqs,
        vec![
            req(h, 40_071, 5, &[s.a_sf, s.a]),
            req(h, 40_083, 2, &[s.w_sf, s.w]),
            req(h, 40_093, 3, &[s.wh_sf, s.wh]),
            // The three unmapped registers between TmpCab and Tmp_SF are read despite max_gap 0.
            req(h, 40_102, 5, &[s.tmp_sf, s.tmp]),
        ]
    );
    assert_eq!(minimum_requests(&s.profile, &[s.a, s.w, s.wh, s.tmp]), 1);
}

#[test]
fn a_sunspec_block_within_the_gap_tolerance_is_one_request() {
    let s = sunspec(10);
    let reqs = plan_all(&s.profile);
    assert_eq!(ranges(&reqs), vec![(Table::Holding, 40_071, 37)]);
    assert_eq!(reqs[0].points, (0..=s.st).collect::<Vec<_>>());
}

#[test]
fn a_scale_factor_beyond_the_gap_tolerance_but_within_the_limit_joins_its_value() {
    let h = Table::Holding;
    let mut b = Builder::new(125, 2000, 5);
    let sf = b.add_sf(h, 60);
    let value = b.add_scaled(h, 0, DataType::U16, sf);
    let between = b.add(h, 30, DataType::U16);
    let after = b.add(h, 63, DataType::U16);
    let far = b.add(h, 90, DataType::U16);
    let profile = b.build();

    assert_eq!(plan(&profile, &[value]), vec![req(h, 0, 61, &[sf, value])]);
    // Points inside the value-to-scale-factor span, or within max_gap of it, ride along; a
    // point 26 registers after the last one does not.
    assert_eq!(
        plan(&profile, &[value, between, after, far]),
        vec![
            req(h, 0, 64, &[sf, value, between, after]),
            req(h, 90, 1, &[far])
        ]
    );
    // Without the value, the gap rule applies in full.
    assert_eq!(
        plan(&profile, &[between, sf]),
        vec![req(h, 30, 1, &[between]), req(h, 60, 1, &[sf])]
    );
}

#[test]
fn a_scale_factor_beyond_the_register_limit_gets_a_request_apart_from_its_value() {
    let h = Table::Holding;
    let mut b = Builder::new(125, 2000, 5);
    let sf = b.add_sf(h, 200);
    let value = b.add_scaled(h, 0, DataType::U32, sf);
    let near_sf = b.add(h, 203, DataType::U16);
    let profile = b.build();
    assert_eq!(
        plan(&profile, &[value]),
        vec![req(h, 0, 2, &[value]), req(h, 200, 1, &[sf])]
    );
    assert_eq!(
        plan(&profile, &[value, near_sf]),
        vec![req(h, 0, 2, &[value]), req(h, 200, 4, &[sf, near_sf])]
    );
    // The span is 201 registers here; a scale factor at 123 (span 124) fits.
    let mut b = Builder::new(125, 2000, 5);
    let sf = b.add_sf(h, 123);
    let value = b.add_scaled(h, 0, DataType::U32, sf);
    assert_eq!(
        plan(&b.build(), &[value]),
        vec![req(h, 0, 124, &[sf, value])]
    );
}

#[test]
fn a_scale_factor_shared_too_widely_stays_with_its_nearest_dependants() {
    let h = Table::Holding;
    let mut b = Builder::new(10, 2000, 0);
    let sf = b.add_sf(h, 8);
    let left = b.add_scaled(h, 0, DataType::U16, sf);
    let right = b.add_scaled(h, 14, DataType::U16, sf);
    let profile = b.build();
    // Both spans (9 and 7 registers) fit, but all three would need 15: the nearer one wins.
    assert_eq!(
        plan(&profile, &[left, right]),
        vec![req(h, 0, 1, &[left]), req(h, 8, 7, &[sf, right])]
    );
}

#[test]
fn coils_and_discrete_inputs_are_limited_by_max_bits_and_never_share_a_request() {
    let mut b = Builder::new(10, 2000, 0);
    for a in 0..3000 {
        b.add(Table::Coil, a, DataType::Bool);
    }
    let d0 = b.add(Table::Discrete, 0, DataType::Bool);
    let d1 = b.add(Table::Discrete, 5, DataType::Bool);
    let profile = b.build();
    let reqs = plan_all(&profile);
    assert_eq!(
        ranges(&reqs),
        vec![
            (Table::Coil, 0, 2000),
            (Table::Coil, 2000, 1000),
            (Table::Discrete, 0, 1),
            (Table::Discrete, 5, 1),
        ]
    );
    assert_eq!(reqs[2].points, vec![d0]);
    assert_eq!(reqs[3].points, vec![d1]);

    let mut b = Builder::new(125, 16, 4);
    for a in [0, 3, 7, 11, 15, 16, 30] {
        b.add(Table::Coil, a, DataType::Bool);
    }
    assert_eq!(
        ranges(&plan_all(&b.build())),
        vec![
            (Table::Coil, 0, 16),
            (Table::Coil, 16, 1),
            (Table::Coil, 30, 1)
        ]
    );
}

#[test]
fn a_single_point_device_gets_one_request_per_point_including_scale_factors() {
    let h = Table::Holding;
    let mut b = Builder::new(125, 2000, 10).single_point();
    let sf = b.add_sf(h, 3);
    let v = b.add_scaled(h, 0, DataType::U32, sf);
    let w = b.add(h, 2, DataType::U16);
    let c = b.add(Table::Coil, 2, DataType::Bool);
    let profile = b.build();
    assert_eq!(
        plan_all(&profile),
        vec![
            req(Table::Coil, 2, 1, &[c]),
            req(h, 0, 2, &[v]),
            req(h, 2, 1, &[w]),
            req(h, 3, 1, &[sf]),
        ]
    );
    assert_eq!(plan(&profile, &[v]).len(), 2);
    assert_eq!(minimum_requests(&profile, &[sf, v, w, c]), 2);
}

#[test]
fn points_at_the_top_of_the_address_space_never_cross_65535() {
    let h = Table::Input;
    let mut b = Builder::new(125, 2000, 3);
    b.add(h, 65_520, DataType::U64);
    b.add(h, 65_530, DataType::U32);
    b.add(h, 65_534, DataType::U16);
    b.add(h, 65_535, DataType::U16);
    b.add(Table::Coil, 65_535, DataType::Bool);
    let profile = b.build();
    let reqs = plan_all(&profile);
    assert_eq!(
        ranges(&reqs),
        vec![
            (Table::Coil, 65_535, 1),
            (Table::Input, 65_520, 4),
            (Table::Input, 65_530, 6)
        ]
    );
    assert!(reqs.iter().all(|r| r.end() <= 65_536));
}

#[test]
fn a_point_the_validator_would_refuse_is_read_alone_and_never_crosses_65535() {
    let h = Table::Holding;
    let mut b = Builder::new(8, 2000, 125);
    let past = b.add(h, 65_535, DataType::U32);
    let edge = b.add(h, 65_534, DataType::U32);
    let near = b.add(h, 65_533, DataType::U16);
    let wide = b.add(h, 0, DataType::Ascii(20));
    let inside = b.add(h, 2, DataType::U16);
    let empty = b.add(h, 100, DataType::Ascii(0));
    let profile = b.build();
    assert_eq!(
        plan_all(&profile),
        vec![
            // Wider than max_registers: alone and over the limit, so the device says no.
            req(h, 0, 20, &[wide]),
            req(h, 2, 1, &[inside]),
            req(h, 100, 1, &[empty]),
            // A u32 at 65534 is valid (registers 65534 and 65535).
            req(h, 65_533, 3, &[edge, near]),
            // One at 65535 is not: alone, cut at 65535.
            req(h, 65_535, 1, &[past]),
        ]
    );
}

#[test]
fn duplicate_and_unknown_due_indices_are_harmless() {
    let profile = sdm630(40, 10);
    assert_eq!(
        plan(&profile, &[3, 1, 3, 3, 1, 999]),
        plan(&profile, &[1, 3])
    );
    assert_eq!(
        plan(&profile, &[1, 3]),
        vec![req(Table::Input, 2, 6, &[1, 3])]
    );
    assert_eq!(minimum_requests(&profile, &[3, 3, 1, 999]), 1);
    assert!(plan(&profile, &[]).is_empty());
    assert!(plan(&profile, &[usize::MAX]).is_empty());
}

#[test]
fn overlapping_points_of_one_register_share_one_request() {
    let h = Table::Holding;
    let mut b = Builder::new(125, 2000, 0);
    let word = b.add(h, 10, DataType::U16);
    let bit0 = b.add(h, 10, DataType::Bit(0));
    let bit7 = b.add(h, 10, DataType::Bit(7));
    let long = b.add(h, 9, DataType::U32);
    let profile = b.build();
    assert_eq!(
        plan_all(&profile),
        vec![req(h, 9, 2, &[word, bit0, bit7, long])]
    );
}

#[test]
fn a_scale_factor_chain_or_loop_is_followed_without_hanging() {
    let h = Table::Holding;
    let mut b = Builder::new(125, 2000, 0);
    let a = b.add(h, 0, DataType::I16);
    let c = b.add(h, 50, DataType::I16);
    let d = b.add(h, 20, DataType::U16);
    b.points[a].scale_factor = Some(c);
    b.points[c].scale_factor = Some(a);
    b.points[d].scale_factor = Some(d);
    let e = b.add(h, 90, DataType::U16);
    b.points[e].scale_factor = Some(12_345);
    let profile = b.build();
    assert_eq!(
        plan(&profile, &[a, d, e]),
        vec![req(h, 0, 51, &[a, c, d]), req(h, 90, 1, &[e])]
    );
}

// ---------------------------------------------------------------------------------------------
// Due points.

fn with_intervals(intervals: &[Option<u64>]) -> Profile {
    let mut b = Builder::new(125, 2000, 0);
    for (k, iv) in intervals.iter().enumerate() {
        let i = b.add(Table::Holding, u16::try_from(k).unwrap() * 2, DataType::U16);
        b.points[i].interval = iv.map(Duration::from_secs);
    }
    b.build()
}

fn due_cycles(profile: &Profile, device: Duration, point: usize, cycles: u64) -> Vec<u64> {
    (0..cycles)
        .filter(|&k| due_points(profile, device, k).contains(&point))
        .collect()
}

#[test]
fn points_without_an_interval_or_a_shorter_one_are_due_every_cycle() {
    let profile = with_intervals(&[None, Some(5), Some(10)]);
    let d = Duration::from_secs(10);
    for k in 0..20 {
        assert_eq!(due_points(&profile, d, k), vec![0, 1, 2]);
    }
}

#[test]
fn an_interval_that_is_a_multiple_of_the_device_interval_is_due_every_nth_cycle() {
    let profile = with_intervals(&[Some(60)]);
    let d = Duration::from_secs(10);
    assert_eq!(due_cycles(&profile, d, 0, 20), vec![0, 6, 12, 18]);
    assert_eq!(due_points(&profile, d, 600_000_000_000), vec![0]);
    assert!(due_points(&profile, d, 600_000_000_001).is_empty());
}

#[test]
fn any_other_interval_is_due_in_the_cycle_where_its_boundary_falls() {
    let profile = with_intervals(&[Some(25)]);
    let d = Duration::from_secs(10);
    // Boundaries at 0, 25, 50, 75, 100, 125 s fall in cycles 0, 2, 5, 7, 10, 12.
    assert_eq!(due_cycles(&profile, d, 0, 13), vec![0, 2, 5, 7, 10, 12]);
    let profile = with_intervals(&[Some(15)]);
    // 0, 15, 30, 45, 60, 75, 90: cycles 0, 1, 3, 4, 6, 7, 9.
    assert_eq!(due_cycles(&profile, d, 0, 10), vec![0, 1, 3, 4, 6, 7, 9]);
}

#[test]
fn helper_points_are_due_only_through_their_dependants() {
    let h = Table::Holding;
    let mut b = Builder::new(125, 2000, 0);
    let sf = b.add_sf(h, 5);
    b.points[sf].interval = Some(Duration::from_secs(1));
    let slow = b.add_scaled(h, 0, DataType::U16, sf);
    b.points[slow].interval = Some(Duration::from_secs(30));
    let orphan = b.add_sf(h, 9);
    let plain = b.add(h, 20, DataType::U16);
    let profile = b.build();
    let d = Duration::from_secs(10);
    assert_eq!(due_points(&profile, d, 0), vec![sf, slow, plain]);
    assert_eq!(due_points(&profile, d, 1), vec![plain]);
    assert_eq!(due_points(&profile, d, 3), vec![sf, slow, plain]);
    assert!((0..10).all(|k| !due_points(&profile, d, k).contains(&orphan)));
    assert_eq!(
        plan(&profile, &due_points(&profile, d, 3)),
        vec![req(h, 0, 6, &[sf, slow]), req(h, 20, 1, &[plain])]
    );
}

#[test]
fn a_zero_device_interval_or_huge_cycle_numbers_make_points_due_without_panicking() {
    let profile = with_intervals(&[Some(25), Some(u64::MAX), None]);
    assert_eq!(due_points(&profile, Duration::ZERO, 7), vec![0, 1, 2]);
    let d = Duration::from_secs(10);
    let _ = due_points(&profile, d, u64::MAX);
    let _ = due_points(&profile, Duration::MAX, u64::MAX);
    assert_eq!(due_points(&profile, d, 1), vec![2]);
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// Span `[start, end)` of a point, as the contract counts it.
fn span(p: &Point) -> (u32, u32) {
    let s = u32::from(p.address);
    (s, p.end().max(s + 1))
}

fn limit(profile: &Profile, table: Table) -> u32 {
    if table.is_bits() {
        u32::from(profile.limits.max_bits)
    } else {
        u32::from(profile.limits.max_registers)
    }
}

/// The due points plus their scale factors, transitively.
fn needed(profile: &Profile, due: &[usize]) -> Vec<usize> {
    let mut set = std::collections::BTreeSet::new();
    let mut stack: Vec<usize> = due
        .iter()
        .copied()
        .filter(|&i| i < profile.points.len())
        .collect();
    while let Some(i) = stack.pop() {
        if set.insert(i) {
            let sf = profile.points[i].scale_factor;
            stack.extend(sf.filter(|&sf| sf < profile.points.len()));
        }
    }
    set.into_iter().collect()
}

/// Scale-factor pairs `(dependant, sf)` among `needed` that rule 3 must keep together when
/// nothing conflicts: same table, distinct, span within the limit.
fn fitting_pairs(profile: &Profile, needed: &[usize]) -> Vec<(usize, usize)> {
    needed
        .iter()
        .filter_map(|&p| {
            let sf = profile.points[p].scale_factor?;
            let (a, b) = (&profile.points[p], profile.points.get(sf)?);
            let ((ps, pe), (qs, qe)) = (span(a), span(b));
            (sf != p
                && needed.contains(&sf)
                && a.table == b.table
                && pe.max(qe) - ps.min(qs) <= limit(profile, a.table))
            .then_some((p, sf))
        })
        .collect()
}

/// True when every scale factor's fitting dependants fit one request together with it (then
/// rule 3 is unambiguous: all fitting pairs together).
fn conflict_free(profile: &Profile, pairs: &[(usize, usize)]) -> bool {
    let mut stars: BTreeMap<usize, (u32, u32)> = BTreeMap::new();
    for &(p, sf) in pairs {
        let (ps, pe) = span(&profile.points[p]);
        let h = stars.entry(sf).or_insert_with(|| span(&profile.points[sf]));
        *h = (h.0.min(ps), h.1.max(pe));
    }
    // Chains (a scale factor with a scale factor) are out of scope for this check.
    let chained = pairs
        .iter()
        .any(|&(_, sf)| pairs.iter().any(|&(p, _)| p == sf));
    !chained
        && stars
            .iter()
            .all(|(&sf, &(s, e))| e - s <= limit(profile, profile.points[sf].table))
}

/// Longest run in `[start, end)` not in `covered` (a list of spans).
fn longest_hole(start: u32, end: u32, covered: &[(u32, u32)]) -> u32 {
    let mut marks = vec![false; (end - start) as usize];
    for &(s, e) in covered {
        for r in s.max(start)..e.min(end) {
            marks[(r - start) as usize] = true;
        }
    }
    let (mut best, mut run) = (0, 0);
    for m in marks {
        run = if m { 0 } else { run + 1 };
        best = best.max(run);
    }
    best
}

/// Checks every invariant of the module contract on `plan(profile, due)`.
fn check_plan(profile: &Profile, due: &[usize]) -> Result<(), TestCaseError> {
    let reqs = plan(profile, due);
    let needed = needed(profile, due);
    let limits = profile.limits;

    // Deterministic, and independent of the order and repetition of `due`.
    prop_assert_eq!(&reqs, &plan(profile, due));
    let mut twice: Vec<usize> = due.iter().rev().copied().collect();
    twice.extend(due);
    prop_assert_eq!(&reqs, &plan(profile, &twice));

    // Sorted by (table, start); points sorted.
    prop_assert!(
        reqs.windows(2)
            .all(|w| (w[0].table, w[0].start) <= (w[1].table, w[1].start))
    );
    prop_assert!(
        reqs.iter()
            .all(|r| r.points.windows(2).all(|w| w[0] < w[1]))
    );

    // Every needed point served exactly once, nothing else served.
    let mut served: Vec<usize> = reqs.iter().flat_map(|r| r.points.iter().copied()).collect();
    served.sort_unstable();
    prop_assert_eq!(&served, &needed);

    for r in &reqs {
        prop_assert!(!r.points.is_empty());
        prop_assert!(r.count >= 1);
        prop_assert!(r.end() <= 65_536, "{r:?} crosses 65535");
        prop_assert!(
            u32::from(r.count) <= limit(profile, r.table),
            "{r:?} over the limit"
        );
        let mut hull = (u32::MAX, 0);
        let mut covered = Vec::new();
        for &i in &r.points {
            let p = &profile.points[i];
            let (s, e) = span(p);
            prop_assert_eq!(p.table, r.table);
            prop_assert!(
                u32::from(r.start) <= s && e <= r.end(),
                "{r:?} misses point {i}"
            );
            hull = (hull.0.min(s), hull.1.max(e));
            covered.push((s, e));
            if let Some(sf) = p
                .scale_factor
                .filter(|&sf| sf != i && r.points.contains(&sf))
            {
                let (qs, qe) = span(&profile.points[sf]);
                covered.push((s.min(qs), e.max(qe)));
            }
        }
        // The range is exactly the hull of the request's own points.
        prop_assert_eq!((u32::from(r.start), r.end()), hull);
        if limits.single_point {
            prop_assert_eq!(r.points.len(), 1);
        } else {
            // Gap rule, strictest reading: only this request's points (and its scale-factor
            // spans) count as read on purpose.
            let hole = longest_hole(hull.0, hull.1, &covered);
            prop_assert!(hole <= u32::from(limits.max_gap), "{r:?} bridges {hole}");
        }
    }

    // Rule 3: fitting pairs kept together whenever the whole star fits.
    if !limits.single_point {
        let pairs = fitting_pairs(profile, &needed);
        let together = |p: usize, sf: usize| {
            reqs.iter()
                .any(|r| r.points.contains(&p) && r.points.contains(&sf))
        };
        if conflict_free(profile, &pairs) {
            for &(p, sf) in &pairs {
                prop_assert!(together(p, sf), "point {p} not with its scale factor {sf}");
            }
        }
    }

    let min = minimum_requests(profile, due);
    prop_assert!(
        min <= reqs.len(),
        "{} requests below the minimum {min}",
        reqs.len()
    );
    prop_assert!(reqs.len() <= needed.len());
    Ok(())
}

/// A point as generated: table, address, type choice, whether it is a scale-factor helper,
/// which helper it uses.
type RawPoint = (u8, u16, u8, bool, Option<u8>);

/// Builds a valid profile from generated parts (points adjusted to fit the limits and the
/// address space, scale factors linking register points to `i16` helpers).
fn random_profile(raw: &[RawPoint], limits: ReadLimits) -> Profile {
    let mut b = Builder::new(limits.max_registers, limits.max_bits, limits.max_gap);
    b.limits.single_point = limits.single_point;
    let tables = [Table::Holding, Table::Input, Table::Coil, Table::Discrete];
    let types = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::F32,
        DataType::U64,
        DataType::Bit(3),
        DataType::Ascii(3),
        DataType::F64,
    ];
    let mut helpers = Vec::new();
    for &(t, address, ty, is_sf, _) in raw {
        // Mostly holding registers, so that scale factors link often.
        let table = tables[usize::from(t % 6).saturating_sub(2)];
        let mut data_type = if table.is_bits() {
            DataType::Bool
        } else if is_sf {
            DataType::I16
        } else {
            types[usize::from(ty) % types.len()]
        };
        let max = if table.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        };
        if data_type.width() > max {
            data_type = DataType::U16;
        }
        let width = data_type.width();
        let address = address.min(u16::MAX - width + 1);
        let i = b.add(table, address, data_type);
        if is_sf && !table.is_bits() {
            b.points[i].metric = None;
            helpers.push(i);
        }
    }
    for (i, &(_, _, _, is_sf, link)) in raw.iter().enumerate() {
        let is_helper = helpers.contains(&i);
        let linkable = !is_sf && !is_helper && !b.points[i].table.is_bits();
        if let (true, Some(k), false) = (linkable, link, helpers.is_empty()) {
            b.points[i].scale_factor = Some(helpers[usize::from(k) % helpers.len()]);
        }
    }
    b.build()
}

fn limits_strategy(
    max_registers: u16,
    max_bits: u16,
    max_gap: u16,
) -> impl Strategy<Value = ReadLimits> {
    (
        1..=max_registers,
        1..=max_bits,
        0..=max_gap,
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(max_registers, max_bits, max_gap, single_point)| ReadLimits {
                max_registers,
                max_bits,
                max_gap,
                single_point,
            },
        )
}

fn address_strategy() -> impl Strategy<Value = u16> {
    prop_oneof![
        6 => 0u16..200,
        1 => 40_000u16..40_300,
        1 => 65_400u16..=65_535,
        1 => any::<u16>(),
    ]
}

fn raw_point(addresses: impl Strategy<Value = u16>) -> impl Strategy<Value = RawPoint> {
    (
        any::<u8>(),
        addresses,
        any::<u8>(),
        prop::bool::weighted(0.25),
        prop::option::weighted(0.6, any::<u8>()),
    )
}

/// Every way to split `items` into blocks, calling `visit` with each block assignment.
fn partitions(n: usize, visit: &mut impl FnMut(&[usize], usize)) {
    fn rec(
        k: usize,
        n: usize,
        blocks: usize,
        assign: &mut Vec<usize>,
        visit: &mut impl FnMut(&[usize], usize),
    ) {
        if k == n {
            visit(assign, blocks);
            return;
        }
        for b in 0..=blocks {
            assign.push(b);
            rec(k + 1, n, blocks.max(b + 1), assign, visit);
            assign.pop();
        }
    }
    rec(0, n, 0, &mut Vec::new(), visit);
}

/// Whether one block of points is a valid request under the loosest reading of the rules:
/// size limit, and no run longer than `max_gap` that is neither a needed point's register nor
/// between a point and its scale factor in the same block. `gaps` false ignores the gap rule.
fn block_ok(profile: &Profile, needed: &[usize], block: &[usize], gaps: bool) -> bool {
    let table = profile.points[block[0]].table;
    if block.iter().any(|&i| profile.points[i].table != table) {
        return false;
    }
    let (s, e) = block.iter().fold((u32::MAX, 0), |(s, e), &i| {
        let (ps, pe) = span(&profile.points[i]);
        (s.min(ps), e.max(pe))
    });
    if e - s > limit(profile, table) || e > 65_536 {
        return false;
    }
    if !gaps {
        return true;
    }
    let mut covered: Vec<(u32, u32)> = needed
        .iter()
        .filter(|&&i| profile.points[i].table == table)
        .map(|&i| span(&profile.points[i]))
        .collect();
    for &i in block {
        let sf = profile.points[i].scale_factor;
        if let Some(sf) = sf.filter(|&sf| sf != i && block.contains(&sf)) {
            let ((ps, pe), (qs, qe)) = (span(&profile.points[i]), span(&profile.points[sf]));
            covered.push((ps.min(qs), pe.max(qe)));
        }
    }
    longest_hole(s, e, &covered) <= u32::from(profile.limits.max_gap)
}

/// The fewest requests of any grouping of `needed` that keeps the size limits and, when
/// `rules` is set, the gap rule with every pair of `pairs` in one request.
fn brute_force(
    profile: &Profile,
    needed: &[usize],
    rules: bool,
    pairs: &[(usize, usize)],
) -> usize {
    let mut best = usize::MAX;
    partitions(needed.len(), &mut |assign, blocks| {
        if blocks >= best {
            return;
        }
        let block_of = |i: usize| assign[needed.iter().position(|&n| n == i).unwrap()];
        if pairs.iter().any(|&(p, sf)| block_of(p) != block_of(sf)) {
            return;
        }
        let ok = (0..blocks).all(|b| {
            let block: Vec<usize> = needed
                .iter()
                .zip(assign)
                .filter(|&(_, &a)| a == b)
                .map(|(&i, _)| i)
                .collect();
            block_ok(profile, needed, &block, rules)
        });
        if ok {
            best = blocks;
        }
    });
    best
}

proptest! {
    #[test]
    fn every_plan_keeps_the_contract_on_random_profiles(
        raw in prop::collection::vec(raw_point(address_strategy()), 0..40),
        limits in prop_oneof![
            limits_strategy(125, 2000, 130),
            limits_strategy(12, 12, 6),
        ],
        due in prop::collection::vec(0usize..45, 0..50),
    ) {
        let profile = random_profile(&raw, limits);
        check_plan(&profile, &due)?;
        let all: Vec<usize> = (0..profile.points.len()).collect();
        check_plan(&profile, &all)?;
        prop_assert_eq!(plan_all(&profile), plan(&profile, &all));
    }

    #[test]
    fn the_plan_uses_as_few_requests_as_a_brute_force_search_on_small_profiles(
        raw in prop::collection::vec(raw_point(0u16..40), 1..=8),
        limits in limits_strategy(20, 20, 6),
        due in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
    ) {
        let profile = random_profile(&raw, limits);
        let due: Vec<usize> = due.iter().map(|d| d.index(raw.len())).collect();
        let needed = needed(&profile, &due);
        check_plan(&profile, &due)?;
        let count = plan(&profile, &due).len();
        prop_assert_eq!(
            minimum_requests(&profile, &due),
            brute_force(&profile, &needed, false, &[])
        );
        if limits.single_point {
            prop_assert_eq!(count, needed.len());
        } else {
            let reqs = plan(&profile, &due);
            let mut pairs = fitting_pairs(&profile, &needed);
            if !conflict_free(&profile, &pairs) {
                // Rule 3 cannot keep every pair: compare with the groupings that keep the
                // pairs this plan keeps (the module's claim for this case).
                pairs.retain(|&(p, sf)| {
                    reqs.iter().any(|r| r.points.contains(&p) && r.points.contains(&sf))
                });
            }
            let best = brute_force(&profile, &needed, true, &pairs);
            prop_assert_eq!(count, best, "plan {:?}", reqs);
        }
    }

    #[test]
    fn a_point_with_its_own_interval_is_due_once_per_boundary_and_never_skipped_for_good(
        device_ms in 100u64..5_000,
        interval_ms in 1u64..40_000,
        first in 0u64..10_000,
    ) {
        let mut b = Builder::new(125, 2000, 0);
        let i = b.add(Table::Holding, 0, DataType::U16);
        b.points[i].interval = Some(Duration::from_millis(interval_ms));
        let profile = b.build();
        let d = Duration::from_millis(device_ms);
        let window = interval_ms.div_ceil(device_ms).max(1);
        let mut last_due = None;
        for k in first..first + 3 * window {
            let due = due_points(&profile, d, k) == vec![i];
            // Reference: some multiple of the interval lies in [k·d, (k+1)·d), or the interval
            // is no longer than the device's.
            let (start, end) = (k * device_ms, (k + 1) * device_ms);
            let expected = interval_ms <= device_ms || start.div_ceil(interval_ms) * interval_ms < end;
            prop_assert_eq!(due, expected, "cycle {}", k);
            if due {
                if let Some(prev) = last_due {
                    prop_assert!(k - prev <= window);
                }
                last_due = Some(k);
            }
        }
        prop_assert!(last_due.is_some());
    }
}
