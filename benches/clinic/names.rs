//! Realistic patients for a clinic in Algeria, France or Canada: French and English names with
//! accents, Arabic-script names, and Latin transliterations of Arabic names, plus the ways the
//! same person gets typed differently in two programs.

use chrono::{Datelike, NaiveDate};

use super::rng::Rng;

const LATIN_FIRST: &[&str] = &[
    "Zoé",
    "Hélène",
    "Amélie",
    "Chloé",
    "Léa",
    "Noémie",
    "Élodie",
    "Inès",
    "Maëlle",
    "Cécile",
    "Jérôme",
    "François",
    "Benoît",
    "Théo",
    "Gaël",
    "Loïc",
    "Raphaël",
    "Stéphane",
    "Émile",
    "Sébastien",
    "John",
    "Mary",
    "Sarah",
    "James",
    "Emily",
    "Thomas",
    "Claire",
    "Julien",
    "Lucas",
    "Camille",
    "Seán",
    "Marie-Hélène",
    "Jean-François",
    "Anaïs",
];
const LATIN_LAST: &[&str] = &[
    "Lefèvre",
    "Dubois",
    "Martin",
    "Bernard",
    "Lefebvre",
    "Girard",
    "Moreau",
    "Fournier",
    "Durand",
    "Mercier",
    "Lambert",
    "Bonnet",
    "Rousseau",
    "Gauthier",
    "Chevalier",
    "Boucher",
    "Côté",
    "Gagné",
    "Bélanger",
    "Lévesque",
    "Pelletier",
    "O'Brien",
    "Smith",
    "Brown",
    "Taylor",
    "Wilson",
    "Le Goff",
    "De la Fontaine",
    "Müller",
    "Ménard",
];
const ARABIC_FIRST: &[&str] = &[
    "محمد",
    "فاطمة",
    "أحمد",
    "عائشة",
    "يوسف",
    "مريم",
    "عمر",
    "خديجة",
    "علي",
    "زينب",
    "إبراهيم",
    "سارة",
    "حسن",
    "نور",
    "كريم",
    "ليلى",
    "عبد الله",
    "سمية",
    "مصطفى",
    "أمينة",
    "هشام",
    "نادية",
    "رشيد",
    "سعاد",
];
const ARABIC_LAST: &[&str] = &[
    "بن علي",
    "بوزيد",
    "حداد",
    "بن عمر",
    "العلوي",
    "منصور",
    "الهاشمي",
    "زروقي",
    "بلقاسم",
    "سعيدي",
    "قاسمي",
    "بوعزيز",
    "شريف",
    "عبد الرحمن",
    "مرابط",
    "بن يوسف",
    "حمدي",
    "بوقرة",
    "دراجي",
    "لعمامرة",
];
const TRANSLIT_FIRST: &[&str] = &[
    "Mohamed", "Mohammed", "Fatima", "Fatma", "Ahmed", "Aïcha", "Youssef", "Meriem", "Omar", "Khadija", "Ali", "Zineb",
    "Brahim", "Sara", "Hassan", "Nour", "Karim", "Leïla", "Abdellah", "Soumia", "Mustapha", "Amina", "Hichem", "Nadia",
];
const TRANSLIT_LAST: &[&str] = &[
    "Benali",
    "Ben Ali",
    "Bouzid",
    "Haddad",
    "Benomar",
    "El Alaoui",
    "Mansour",
    "El Hachemi",
    "Zerrouki",
    "Belkacem",
    "Saïdi",
    "Kacemi",
    "Bouaziz",
    "Cherif",
    "Abderrahmane",
    "Merabet",
    "Benyoucef",
    "Hamdi",
    "Bougherra",
    "Derradji",
];
const ARABIC_LETTERS: &[char] = &['ب', 'ت', 'ث', 'ج', 'ح', 'د', 'ر', 'س', 'ع', 'ف', 'ق', 'ك', 'ل', 'م', 'ن', 'ه'];
const TATWEEL: char = 'ـ';
const SHADDA: char = '\u{0651}';

/// How a name is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// French or English, with accents.
    Latin,
    /// Arabic script.
    Arabic,
    /// An Arabic name in Latin letters.
    Transliterated,
}

/// One person as one program holds them.
#[derive(Debug, Clone)]
pub struct Person {
    /// First name.
    pub first: String,
    /// Last name.
    pub last: String,
    /// NanoPix's `Male` / `Female`.
    pub sex: &'static str,
    /// Birth date, if known.
    pub birth: Option<NaiveDate>,
    /// How the name is written.
    pub script: Script,
    /// The NanoPix id, for NanoPix patients.
    pub nanopix_id: Option<String>,
}

impl Person {
    /// A new random person born between 1940 and 2020.
    pub fn random(rng: &mut Rng) -> Self {
        let script = match rng.between(0, 100) {
            0..40 => Script::Latin,
            40..65 => Script::Arabic,
            _ => Script::Transliterated,
        };
        let (firsts, lasts) = match script {
            Script::Latin => (LATIN_FIRST, LATIN_LAST),
            Script::Arabic => (ARABIC_FIRST, ARABIC_LAST),
            Script::Transliterated => (TRANSLIT_FIRST, TRANSLIT_LAST),
        };
        let mut first = (*rng.pick(firsts)).to_owned();
        if rng.chance(1, 4) {
            first = format!("{first} {}", rng.pick(firsts));
        }
        let birth = NaiveDate::from_ymd_opt(1940, 1, 1)
            .and_then(|start| start.checked_add_days(chrono::Days::new(rng.between(0, 29_200))));
        let sex = if rng.chance(1, 2) { "Female" } else { "Male" };
        Self { first, last: (*rng.pick(lasts)).to_owned(), sex, birth, script, nanopix_id: None }
    }

    /// The birth date as NanoPix writes it, `YYYY-MM-DD`.
    pub fn birth_text(&self) -> Option<String> {
        self.birth.map(|b| b.format("%Y-%m-%d").to_string())
    }

    /// The same person typed again in the other program: different case, accents, spaces,
    /// tatweel or harakat, but the same after normalisation.
    pub fn as_typed_again(&self, rng: &mut Rng) -> Self {
        let (first, last) = match self.script {
            Script::Arabic => (arabic_variant(&self.first, rng), arabic_variant(&self.last, rng)),
            _ => (latin_variant(&self.first, rng), latin_variant(&self.last, rng)),
        };
        Self { first, last, nanopix_id: None, ..self.clone() }
    }

    /// The same person with first and last name swapped.
    pub fn swapped(&self) -> Self {
        Self { first: self.last.clone(), last: self.first.clone(), nanopix_id: None, ..self.clone() }
    }

    /// The same person with one letter of the last name changed.
    pub fn with_typo(&self, rng: &mut Rng) -> Self {
        let mut letters: Vec<char> = self.last.chars().collect();
        let at = rng.between(0, letters.len() as u64) as usize;
        let replacement = match self.script {
            Script::Arabic => *rng.pick(ARABIC_LETTERS),
            _ => char::from(b'a' + rng.between(0, 26) as u8),
        };
        if let Some(letter) = letters.get_mut(at) {
            *letter = if *letter == replacement { 'x' } else { replacement };
        }
        Self { last: letters.into_iter().collect(), nanopix_id: None, ..self.clone() }
    }
}

/// A Latin name typed differently: upper or lower case, accents dropped, stray spaces.
fn latin_variant(name: &str, rng: &mut Rng) -> String {
    match rng.between(0, 5) {
        0 => name.to_uppercase(),
        1 => name.to_lowercase(),
        2 => name.chars().map(without_accent).collect(),
        3 => format!("  {name} "),
        _ => name.replacen(' ', "  ", 1).to_uppercase(),
    }
}

/// An Arabic name typed differently: a tatweel, a shadda, or stray spaces.
fn arabic_variant(name: &str, rng: &mut Rng) -> String {
    let mut chars = name.chars();
    let head: String = chars.next().into_iter().collect();
    let tail: String = chars.collect();
    match rng.between(0, 3) {
        0 => format!("{head}{TATWEEL}{tail}"),
        1 => format!("{head}{SHADDA}{tail}"),
        _ => format!(" {} ", name.replacen(' ', "  ", 1)),
    }
}

/// The letter without its accent, for the accents these names use.
fn without_accent(letter: char) -> char {
    match letter {
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'É' => 'E',
        'à' | 'â' | 'ä' => 'a',
        'î' | 'ï' => 'i',
        'ô' | 'ö' => 'o',
        'ù' | 'û' | 'ü' => 'u',
        'ç' => 'c',
        'á' => 'a',
        other => other,
    }
}

/// A DentalTID `patients` row, as DentalTID's `Patient.toJson` writes it.
pub struct DentalRecord {
    person: Person,
    age: i64,
    health_state: &'static str,
    diagnosis: &'static str,
    treatment: &'static str,
    payment: f64,
    created_at: String,
    is_emergency: i64,
    severity: &'static str,
    phone: String,
}

impl DentalRecord {
    /// A row for `person` with plausible clinical fields, created between 2018 and 2025.
    pub fn random(person: &Person, rng: &mut Rng) -> Self {
        let age = person.birth.map_or(0, |b| i64::from(super::clinic_now().year() - b.year()));
        let created = NaiveDate::from_ymd_opt(2018, 1, 1)
            .and_then(|d| d.and_hms_opt(8, 0, 0))
            .map(|start| start + chrono::Duration::seconds(rng.between(0, 230_000_000) as i64))
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S.000").to_string())
            .unwrap_or_default();
        let is_emergency = i64::from(rng.chance(1, 50));
        Self {
            person: person.clone(),
            age,
            health_state: *rng.pick(&["", "", "Diabetic", "Allergic to penicillin", "Hypertension"]),
            diagnosis: *rng.pick(&["", "Caries 36", "Gingivitis", "Pulpitis 21"]),
            treatment: *rng.pick(&["", "Filling", "Scaling", "Root canal"]),
            payment: rng.between(0, 40) as f64 * 500.0,
            created_at: created,
            is_emergency,
            severity: if is_emergency == 1 { "EmergencySeverity.high" } else { "EmergencySeverity.low" },
            phone: format!("0{}{:08}", rng.between(5, 8), rng.between(0, 100_000_000)),
        }
    }

    /// The 14 values of DentalTID's insert, in column order.
    #[allow(clippy::type_complexity)]
    pub fn params(&self) -> (&str, &str, i64, Option<String>, &str, &str, &str, f64, &str, i64, &str, &str, &str, i64) {
        let birth = self.person.birth.map(|b| b.format("%Y-%m-%dT00:00:00.000").to_string());
        let alerts = if self.health_state.starts_with("Allergic") { "penicillin" } else { "" };
        (
            &self.person.first,
            &self.person.last,
            self.age,
            birth,
            self.health_state,
            self.diagnosis,
            self.treatment,
            self.payment,
            &self.created_at,
            self.is_emergency,
            self.severity,
            alerts,
            &self.phone,
            0,
        )
    }
}
