//! The shape of the simulated federation: England's regions, their hubs, 152 authorities with
//! their caseloads and 1,200 care settings, shrunk by `--scale`.

use crate::fnv::FnvMap;
use cpis_protocol::directory::{MEMBERS_MAX, Role};
use cpis_protocol::harness::{FederationSpec, SplitMix64, TestFederation};
use cpis_protocol::ids::{NhsNumber, OdsCode};
use cpis_protocol::records::{LookupKind, SettingType};

use std::ops::Range;

/// Index of a member in the simulation (hubs first, then authorities, then settings).
pub type NodeId = usize;

/// Name of the simulated federation (identities are derived from it and the member's code).
pub const FEDERATION: &str = "cpis-sim";

/// Open plans nationally at scale 1 (about 84,000 looked after and 50,000 on protection plans).
pub const NATIONAL_PLANS: usize = 135_000;
/// Authorities in England.
pub const NATIONAL_AUTHORITIES: usize = 152;
/// Unscheduled and scheduled care settings at scale 1.
pub const NATIONAL_SETTINGS: usize = 1_200;

/// A region with its hub, its share of authorities and its neighbours (second home hubs).
#[derive(Clone, Debug)]
pub struct Region {
    pub name: String,
    pub hub: String,
    pub authorities_national: usize,
    pub neighbours: Vec<usize>,
}

/// A region as the tables below give it: name, hub, authorities, neighbours.
type RegionRow = (&'static str, &'static str, usize, &'static [usize]);

const ENGLAND: [RegionRow; 7] = [
    ("London", "HUBLDN", 33, &[1, 3]),
    ("South East", "HUBSE", 19, &[0, 2]),
    ("South West", "HUBSW", 15, &[1, 4]),
    ("East of England", "HUBEOE", 11, &[0, 4]),
    ("Midlands", "HUBMID", 34, &[5, 3]),
    ("North West", "HUBNW", 23, &[4, 6]),
    ("North East and Yorkshire", "HUBNEY", 17, &[5, 4]),
];

const SMALL: [RegionRow; 3] =
    [("London", "HUBLDN", 33, &[1]), ("Midlands", "HUBMID", 71, &[2, 0]), ("North", "HUBNTH", 48, &[1])];

/// `copies` countries of `rows`' regions: the first as given, the others with their number after
/// each name and hub code, each copy's neighbours within it.
fn regions(rows: &[RegionRow], copies: usize) -> Vec<Region> {
    let mut out = vec![];
    for c in 0..copies {
        let suffix = if c == 0 { String::new() } else { (c + 1).to_string() };
        for (name, hub, authorities, neighbours) in rows {
            out.push(Region {
                name: if c == 0 { name.to_string() } else { format!("{name} {suffix}") },
                hub: format!("{hub}{suffix}"),
                authorities_national: *authorities,
                neighbours: neighbours.iter().map(|n| n + c * rows.len()).collect(),
            });
        }
    }
    out
}

/// The largest scale: ten Englands.
pub const SCALE_MAX: f64 = 10.0;

/// How many of each member, for a scale.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldSpec {
    pub scale: f64,
    pub regions: Vec<Region>,
    pub authorities: usize,
    pub settings: usize,
    pub plans: usize,
}

impl WorldSpec {
    /// England at `scale` (1.0 is the whole country): seven regions from scale 0.1 up, three
    /// below; at least two authorities and two settings per region. Above 1 (up to
    /// [`SCALE_MAX`]), a federation of several Englands: seven regions and hubs for each whole
    /// or part England, authorities, settings and plans in proportion.
    pub fn england(scale: f64) -> WorldSpec {
        let scale = scale.clamp(0.001, SCALE_MAX);
        let regions = match scale {
            s if s < 0.1 => regions(&SMALL, 1),
            s => regions(&ENGLAND, s.ceil() as usize),
        };
        let floor = 2 * regions.len();
        let scaled = |n: usize| ((n as f64) * scale).round() as usize;
        let authorities = scaled(NATIONAL_AUTHORITIES).max(floor);
        // The directory lists every member, at most MEMBERS_MAX: beyond about three Englands the
        // settings are fewer than in proportion (the national lookup rate is kept, so each is busier).
        let settings_max = MEMBERS_MAX.saturating_sub(regions.len() + authorities);
        WorldSpec {
            scale,
            authorities,
            settings: scaled(NATIONAL_SETTINGS).max(floor).min(settings_max),
            plans: scaled(NATIONAL_PLANS).max(10 * floor),
            regions,
        }
    }
}

impl PartialEq for Region {
    fn eq(&self, other: &Self) -> bool {
        self.hub == other.hub
    }
}

/// Every member of the simulated federation, its role, region and home hubs.
pub struct World {
    pub spec: WorldSpec,
    pub fed: TestFederation,
    pub codes: Vec<OdsCode>,
    pub roles: Vec<Role>,
    pub region: Vec<usize>,
    pub home_hubs: Vec<Vec<NodeId>>,
    pub setting_types: Vec<Option<SettingType>>,
    pub hubs: Range<NodeId>,
    pub authorities: Range<NodeId>,
    pub settings: Range<NodeId>,
    pub index: FnvMap<OdsCode, NodeId>,
    /// Every pair that keeps a connection when both ends are up: hub mesh, home hubs.
    pub links: Vec<(NodeId, NodeId)>,
}

/// Splits `total` over `weights` by largest remainder, at least one each.
fn apportion(total: usize, weights: &[usize]) -> Vec<usize> {
    let sum: usize = weights.iter().sum::<usize>().max(1);
    let spare = total.saturating_sub(weights.len());
    let exact: Vec<f64> = weights.iter().map(|w| (spare * w) as f64 / sum as f64).collect();
    let mut out: Vec<usize> = exact.iter().map(|e| 1 + e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| (exact[*b].fract()).total_cmp(&exact[*a].fract()).then(a.cmp(b)));
    let mut left = total.saturating_sub(out.iter().sum());
    for i in order.into_iter().cycle().take(weights.len() * 2) {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// The code of the `i`th authority: 100 to 999, then letter-digit-letter-digit-letter as the
/// directory's rule allows (A0A0A, A0A0B, ..., A0A1A, ...), for federations of more than one England.
fn authority_code(i: usize) -> String {
    if i < 900 {
        return (100 + i).to_string();
    }
    // Mixed radix, last place first: letter, digit, letter, digit, letter.
    let mut j = i - 900;
    let mut places = [' '; 5];
    for (p, radix) in [(4, 26), (3, 10), (2, 26), (1, 10), (0, 26)] {
        let base = if radix == 26 { b'A' } else { b'0' };
        places[p] = char::from(base + (j % radix) as u8);
        j /= radix;
    }
    places.iter().collect()
}

fn code(text: &str) -> OdsCode {
    match OdsCode::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("simulator built a bad code {text:?}: {e}"),
    }
}

/// The setting type of the `i`th setting: three in twenty are scheduled care.
fn setting_type(i: usize) -> SettingType {
    const UNSCHEDULED: [SettingType; 8] = [
        SettingType::EmergencyDepartment,
        SettingType::UrgentTreatmentCentre,
        SettingType::WalkInCentre,
        SettingType::MinorInjuriesUnit,
        SettingType::OutOfHoursGp,
        SettingType::Maternity,
        SettingType::Ambulance,
        SettingType::Nhs111,
    ];
    const SCHEDULED: [SettingType; 3] =
        [SettingType::GeneralPractice, SettingType::HealthVisiting, SettingType::SchoolNursing];
    match i % 20 {
        3 => SCHEDULED[0],
        10 => SCHEDULED[1],
        17 => SCHEDULED[2],
        k => UNSCHEDULED[k % UNSCHEDULED.len()],
    }
}

struct Builder {
    spec: FederationSpec,
    world: World,
}

impl Builder {
    /// Applies one of `FederationSpec`'s by-value builder calls in place.
    fn grow(&mut self, f: impl FnOnce(FederationSpec) -> FederationSpec) {
        let spec = std::mem::replace(&mut self.spec, FederationSpec::new(FEDERATION));
        self.spec = f(spec);
    }

    fn add(&mut self, text: &str, role: Role, region: usize, homes: Vec<NodeId>) -> NodeId {
        let id = self.world.codes.len();
        let c = code(text);
        self.world.index.insert(c.clone(), id);
        self.world.codes.push(c);
        self.world.roles.push(role);
        self.world.region.push(region);
        self.world.home_hubs.push(homes);
        self.world.setting_types.push(None);
        id
    }

    fn homes(&self, region: usize, nth: usize) -> Vec<NodeId> {
        let r = &self.world.spec.regions[region];
        let neighbour = r.neighbours[nth % r.neighbours.len()];
        vec![region, neighbour]
    }

    fn hub_codes(&self, homes: &[NodeId]) -> Vec<String> {
        homes.iter().map(|h| self.world.codes[*h].to_string()).collect()
    }
}

impl World {
    /// Builds the world for `spec`: the directory is signed by the test roots.
    pub fn build(spec: WorldSpec) -> World {
        let empty = World {
            spec: spec.clone(),
            fed: FederationSpec::new(FEDERATION).build(),
            codes: vec![],
            roles: vec![],
            region: vec![],
            home_hubs: vec![],
            setting_types: vec![],
            hubs: 0..0,
            authorities: 0..0,
            settings: 0..0,
            index: FnvMap::default(),
            links: vec![],
        };
        let mut b = Builder { spec: FederationSpec::new(FEDERATION), world: empty };
        for (r, region) in spec.regions.iter().enumerate() {
            b.add(&region.hub, Role::Hub, r, vec![]);
            b.grow(|s| s.hub(&region.hub));
        }
        b.world.hubs = 0..spec.regions.len();
        let weights: Vec<usize> = spec.regions.iter().map(|r| r.authorities_national).collect();
        let start = b.world.codes.len();
        for (r, n) in apportion(spec.authorities, &weights).into_iter().enumerate() {
            for i in 0..n {
                let text = authority_code(b.world.codes.len() - start);
                let homes = b.homes(r, i);
                let name = format!("{} council {}", spec.regions[r].name, i + 1);
                let hubs = b.hub_codes(&homes);
                let hubs: Vec<&str> = hubs.iter().map(String::as_str).collect();
                b.grow(|s| s.authority(&text, &name, &hubs));
                b.add(&text, Role::Authority, r, homes);
            }
        }
        b.world.authorities = start..b.world.codes.len();
        b.add_settings(&weights);
        let Builder { spec: fed_spec, mut world } = b;
        world.fed = fed_spec.build();
        world.links = world.wanted_links();
        world
    }

    fn wanted_links(&self) -> Vec<(NodeId, NodeId)> {
        let mut links = vec![];
        for a in self.hubs.clone() {
            for b in a + 1..self.hubs.end {
                links.push((a, b));
            }
        }
        for m in self.authorities.start..self.settings.end {
            for h in &self.home_hubs[m] {
                links.push(((*h).min(m), (*h).max(m)));
            }
        }
        links.sort_unstable();
        links.dedup();
        links
    }

    pub fn code(&self, id: NodeId) -> &OdsCode {
        &self.codes[id]
    }

    pub fn id(&self, code: &OdsCode) -> Option<NodeId> {
        self.index.get(code).copied()
    }

    pub fn is_hub(&self, id: NodeId) -> bool {
        self.hubs.contains(&id)
    }

    /// Whether lookups from setting `id` are scheduled or unscheduled (by its type).
    pub fn lookup_kind(&self, id: NodeId) -> LookupKind {
        self.setting_types.get(id).copied().flatten().map_or(LookupKind::Scheduled, SettingType::lookup_kind)
    }

    /// Members (hubs, authorities, settings) of a region.
    pub fn region_members(&self, region: usize) -> Vec<NodeId> {
        (0..self.codes.len()).filter(|m| self.region[*m] == region).collect()
    }
}

impl Builder {
    fn add_settings(&mut self, weights: &[usize]) {
        let start = self.world.codes.len();
        let per_region = apportion(self.world.spec.settings, weights);
        for (r, n) in per_region.into_iter().enumerate() {
            for i in 0..n {
                let text = format!("S{:04}", self.world.codes.len() - start + 1);
                let homes = self.homes(r, i);
                let t = setting_type(self.world.codes.len() - start);
                let name = format!("{} {} {}", self.world.spec.regions[r].name, t.name(), i + 1);
                let hubs = self.hub_codes(&homes);
                let hubs: Vec<&str> = hubs.iter().map(String::as_str).collect();
                self.grow(|s| s.setting(&text, &name, t, &hubs));
                let id = self.add(&text, Role::Setting, r, homes);
                self.world.setting_types[id] = Some(t);
            }
        }
        self.world.settings = start..self.world.codes.len();
    }
}

/// The first valid NHS number whose nine-digit stem is `stem` or after it (check digit added).
pub fn nhs_number(stem: u64) -> NhsNumber {
    let mut stem = stem % 1_000_000_000;
    // About one stem in eleven has no check digit: a valid number is a few stems away at most.
    for _ in 0..1_000 {
        let digits: Vec<u64> = (0..9).rev().map(|p| stem / 10u64.pow(p) % 10).collect();
        let sum: u64 = digits.iter().enumerate().map(|(i, d)| d * (10 - i as u64)).sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => {
                stem = (stem + 1) % 1_000_000_000;
                continue;
            }
            c => c,
        };
        if let Ok(n) = NhsNumber::try_from(stem * 10 + check) {
            return n;
        }
        stem = (stem + 1) % 1_000_000_000;
    }
    panic!("no valid NHS number within 1,000 stems of {stem}")
}

/// Stem of the first child with a plan; children without one come from [`UNFLAGGED_STEMS`].
pub const FLAGGED_STEM_BASE: u64 = 400_000_000;
/// Stems of children who never have a plan.
pub const UNFLAGGED_STEMS: Range<u64> = 700_000_000..800_000_000;

/// A child with no plan anywhere.
pub fn unflagged_child(rng: &mut SplitMix64) -> NhsNumber {
    let span = UNFLAGGED_STEMS.end - UNFLAGGED_STEMS.start - 100;
    nhs_number(UNFLAGGED_STEMS.start + rng.below(span))
}

#[cfg(test)]
#[allow(non_snake_case)] // Test names read as specifications: situation__expectation.
mod tests {
    use super::*;

    #[test]
    fn scale_one__seven_regions_152_authorities_1200_settings() {
        let w = World::build(WorldSpec::england(1.0));
        assert_eq!(w.hubs.len(), 7);
        assert_eq!(w.authorities.len(), 152);
        assert_eq!(w.settings.len(), 1200);
        for a in w.authorities.clone() {
            assert_eq!(w.home_hubs[a].len(), 2);
            assert_eq!(w.home_hubs[a][0], w.region[a]);
            assert_ne!(w.home_hubs[a][1], w.region[a]);
        }
    }

    #[test]
    fn scale_three__three_englands_of_hubs_and_members() {
        let w = World::build(WorldSpec::england(3.0));
        assert_eq!(w.hubs.len(), 21);
        assert_eq!(w.authorities.len(), 456);
        assert_eq!(w.settings.len(), 3600);
        assert_eq!(w.spec.plans, 405_000);
        assert_eq!(w.code(20).to_string(), "HUBNEY3");
        for a in w.authorities.clone() {
            // Both home hubs in the authority's own England.
            assert!(w.home_hubs[a].iter().all(|h| h / 7 == w.region[a] / 7));
        }
    }

    #[test]
    fn scale_ten__settings_fewer_so_that_the_directory_holds_every_member() {
        let spec = WorldSpec::england(10.0);
        assert_eq!((spec.regions.len(), spec.authorities), (70, 1520));
        assert_eq!(spec.regions.len() + spec.authorities + spec.settings, MEMBERS_MAX);
        assert_eq!(spec.plans, 1_350_000);
        let w = World::build(spec);
        assert_eq!(w.code(w.authorities.start + 899).to_string(), "999");
        assert_eq!(w.code(w.authorities.start + 900).to_string(), "A0A0A");
        assert_eq!(w.code(w.authorities.start + 927).to_string(), "A0A1B");
    }

    #[test]
    fn generated_nhs_numbers__valid_and_distinct() {
        let a = nhs_number(FLAGGED_STEM_BASE);
        let b = nhs_number(FLAGGED_STEM_BASE + 1);
        assert_ne!(a, b);
        assert!(NhsNumber::parse(&a.digits()).is_ok());
    }
}
