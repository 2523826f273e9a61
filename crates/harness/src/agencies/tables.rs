//! Fixed reference tables the dataset draws from: communes of Senegal with
//! their department and region, given and family names, company activities
//! and streets.
//!
//! These tables are part of the dataset's definition: the generator picks
//! from them by position, so a given seed yields the same data only while
//! they stay as they are. Never reorder, remove or edit an entry; a change
//! here is a change of every generated dataset (the fingerprint test in
//! `dataset` will say so). Commune codes double as the registry-centre
//! digits of NINs.

/// A commune of Senegal and the civil registry centre that registers its
/// births.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Commune {
    /// Registry centre code, digits 2-4 of the NINs of people born here.
    pub code: u16,
    /// Name of the commune.
    pub name: &'static str,
    /// Department containing it.
    pub department: &'static str,
    /// Region containing the department.
    pub region: &'static str,
    /// Relative share of births registered here (rough population weight).
    pub weight: u32,
}

const fn commune(
    code: u16,
    name: &'static str,
    department: &'static str,
    region: &'static str,
    weight: u32,
) -> Commune {
    Commune {
        code,
        name,
        department,
        region,
        weight,
    }
}

/// Communes, by region. Weights roughly follow population.
pub static COMMUNES: &[Commune] = &[
    commune(1, "Dakar-Plateau", "Dakar", "Dakar", 30),
    commune(2, "Médina", "Dakar", "Dakar", 35),
    commune(3, "Grand Yoff", "Dakar", "Dakar", 40),
    commune(4, "Parcelles Assainies", "Dakar", "Dakar", 40),
    commune(5, "Pikine Ouest", "Pikine", "Dakar", 45),
    commune(6, "Thiaroye-sur-Mer", "Pikine", "Dakar", 30),
    commune(7, "Golf Sud", "Guédiawaye", "Dakar", 30),
    commune(8, "Rufisque Est", "Rufisque", "Dakar", 25),
    commune(9, "Bargny", "Rufisque", "Dakar", 12),
    commune(10, "Diamniadio", "Rufisque", "Dakar", 8),
    commune(11, "Thiès Est", "Thiès", "Thiès", 35),
    commune(12, "Khombole", "Thiès", "Thiès", 8),
    commune(13, "Mbour", "Mbour", "Thiès", 35),
    commune(14, "Joal-Fadiouth", "Mbour", "Thiès", 12),
    commune(15, "Tivaouane", "Tivaouane", "Thiès", 18),
    commune(16, "Mékhé", "Tivaouane", "Thiès", 8),
    commune(17, "Saint-Louis", "Saint-Louis", "Saint-Louis", 30),
    commune(18, "Richard-Toll", "Dagana", "Saint-Louis", 15),
    commune(19, "Dagana", "Dagana", "Saint-Louis", 6),
    commune(20, "Podor", "Podor", "Saint-Louis", 8),
    commune(21, "Louga", "Louga", "Louga", 20),
    commune(22, "Kébémer", "Kébémer", "Louga", 10),
    commune(23, "Linguère", "Linguère", "Louga", 7),
    commune(24, "Dahra", "Linguère", "Louga", 7),
    commune(25, "Diourbel", "Diourbel", "Diourbel", 20),
    commune(26, "Touba Mosquée", "Mbacké", "Diourbel", 50),
    commune(27, "Mbacké", "Mbacké", "Diourbel", 15),
    commune(28, "Bambey", "Bambey", "Diourbel", 10),
    commune(29, "Fatick", "Fatick", "Fatick", 12),
    commune(30, "Foundiougne", "Foundiougne", "Fatick", 6),
    commune(31, "Sokone", "Foundiougne", "Fatick", 6),
    commune(32, "Gossas", "Gossas", "Fatick", 6),
    commune(33, "Kaolack", "Kaolack", "Kaolack", 35),
    commune(34, "Nioro du Rip", "Nioro du Rip", "Kaolack", 10),
    commune(35, "Guinguinéo", "Guinguinéo", "Kaolack", 6),
    commune(36, "Kaffrine", "Kaffrine", "Kaffrine", 12),
    commune(37, "Koungheul", "Koungheul", "Kaffrine", 8),
    commune(38, "Birkelane", "Birkelane", "Kaffrine", 5),
    commune(39, "Malem Hodar", "Malem Hodar", "Kaffrine", 5),
    commune(40, "Tambacounda", "Tambacounda", "Tambacounda", 20),
    commune(41, "Bakel", "Bakel", "Tambacounda", 8),
    commune(42, "Goudiry", "Goudiry", "Tambacounda", 5),
    commune(43, "Koumpentoum", "Koumpentoum", "Tambacounda", 5),
    commune(44, "Kédougou", "Kédougou", "Kédougou", 8),
    commune(45, "Saraya", "Saraya", "Kédougou", 3),
    commune(46, "Salémata", "Salémata", "Kédougou", 2),
    commune(47, "Kolda", "Kolda", "Kolda", 15),
    commune(48, "Vélingara", "Vélingara", "Kolda", 10),
    commune(49, "Médina Yoro Foulah", "Médina Yoro Foulah", "Kolda", 5),
    commune(50, "Sédhiou", "Sédhiou", "Sédhiou", 8),
    commune(51, "Goudomp", "Goudomp", "Sédhiou", 6),
    commune(52, "Bounkiling", "Bounkiling", "Sédhiou", 5),
    commune(53, "Ziguinchor", "Ziguinchor", "Ziguinchor", 25),
    commune(54, "Bignona", "Bignona", "Ziguinchor", 10),
    commune(55, "Oussouye", "Oussouye", "Ziguinchor", 4),
    commune(56, "Matam", "Matam", "Matam", 8),
    commune(57, "Ourossogui", "Matam", "Matam", 8),
    commune(58, "Kanel", "Kanel", "Matam", 6),
    commune(59, "Ranérou", "Ranérou Ferlo", "Matam", 3),
];

/// Men's given names: Wolof, Pulaar, Serer, Mandinka, Diola and French.
pub static MALE_NAMES: &[&str] = &[
    "Moussa",
    "Ousmane",
    "Mamadou",
    "Cheikh",
    "Abdoulaye",
    "Ibrahima",
    "Babacar",
    "Modou",
    "Aliou",
    "Amadou",
    "Pape",
    "Serigne",
    "Omar",
    "Lamine",
    "Mouhamed",
    "Malick",
    "Samba",
    "Demba",
    "Alioune",
    "Souleymane",
    "Boubacar",
    "Youssou",
    "El Hadji",
    "Saliou",
    "Ismaïla",
    "Djibril",
    "Massamba",
    "Birame",
    "Idrissa",
    "Mactar",
    "Thierno",
    "Oumar",
    "Sidy",
    "Khadim",
    "Fallou",
    "Bassirou",
    "Assane",
    "Daouda",
    "Habib",
    "Mansour",
    "Ablaye",
    "Badara",
    "Doudou",
    "Moustapha",
    "Seydou",
    "Yoro",
    "Lansana",
    "Ansoumana",
    "Jean",
    "Pierre",
    "Paul",
    "Léopold",
    "François",
    "Augustin",
];

/// Women's given names: Wolof, Pulaar, Serer, Mandinka, Diola and French.
pub static FEMALE_NAMES: &[&str] = &[
    "Aminata",
    "Fatou",
    "Awa",
    "Khady",
    "Ndeye",
    "Mariama",
    "Coumba",
    "Aïssatou",
    "Astou",
    "Rokhaya",
    "Mame Diarra",
    "Bineta",
    "Seynabou",
    "Adama",
    "Dieynaba",
    "Khadidiatou",
    "Sokhna",
    "Maïmouna",
    "Oumou",
    "Penda",
    "Yacine",
    "Ramatoulaye",
    "Marième",
    "Anta",
    "Fatoumata",
    "Nafissatou",
    "Binta",
    "Kiné",
    "Thioro",
    "Khoudia",
    "Arame",
    "Nogaye",
    "Soda",
    "Codou",
    "Mbayang",
    "Mously",
    "Safiétou",
    "Ngoné",
    "Fama",
    "Daba",
    "Sira",
    "Kadiatou",
    "Marie",
    "Sophie",
    "Hélène",
    "Françoise",
    "Thérèse",
    "Véronique",
];

/// Family names, the most common first (they are drawn more often).
pub static FAMILY_NAMES: &[&str] = &[
    "Diop", "Ndiaye", "Fall", "Sow", "Ba", "Diallo", "Faye", "Sarr", "Gueye", "Mbaye", "Ndour",
    "Cissé", "Kane", "Thiam", "Seck", "Diouf", "Sy", "Ka", "Niang", "Mbengue", "Sall", "Camara",
    "Touré", "Wade", "Dieng", "Diagne", "Sène", "Ndoye", "Lô", "Dia", "Badji", "Coly", "Sagna",
    "Mané", "Diatta", "Tall", "Wane", "Ly", "Sylla", "Gaye", "Dione", "Ngom", "Senghor", "Thiaw",
    "Kébé", "Samb", "Mboup", "Cissokho", "Konaté", "Keïta", "Sonko", "Faty", "Dramé", "Tine",
    "Gning", "Loum", "Mendy", "Gomis", "Sambou", "Baldé",
];

/// How many of the first `FAMILY_NAMES` are drawn three times as often.
pub const COMMON_FAMILY_NAMES: usize = 12;

/// A company activity: sector code (ISIC section letter and division), its
/// description, and a word used to make up trading names.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Activity {
    /// Sector code, e.g. `G46`.
    pub code: &'static str,
    /// Description, in French.
    pub description: &'static str,
    /// Word for company names, e.g. "Négoce".
    pub name_word: &'static str,
}

const fn activity(
    code: &'static str,
    description: &'static str,
    name_word: &'static str,
) -> Activity {
    Activity {
        code,
        description,
        name_word,
    }
}

/// Activities of registered companies.
pub static ACTIVITIES: &[Activity] = &[
    activity("G46", "Commerce de gros", "Négoce"),
    activity("G47", "Commerce de détail", "Distribution"),
    activity("H49", "Transport routier de marchandises", "Transport"),
    activity("H52", "Entreposage et logistique portuaire", "Logistique"),
    activity("F41", "Construction de bâtiments", "BTP"),
    activity("F42", "Génie civil", "Travaux"),
    activity("A03", "Pêche et aquaculture", "Pêche"),
    activity(
        "C10",
        "Transformation de produits agricoles et alimentaires",
        "Agro-Industrie",
    ),
    activity("J62", "Programmation et conseil informatiques", "Digital"),
    activity("J61", "Télécommunications", "Télécom"),
    activity("I55", "Hébergement et hôtellerie", "Hôtels"),
    activity("I56", "Restauration", "Restauration"),
    activity("M70", "Conseil de gestion", "Conseil"),
    activity("L68", "Activités immobilières", "Immobilier"),
    activity("K64", "Services financiers et microfinance", "Finance"),
    activity("A01", "Culture et élevage", "Agri"),
    activity("D35", "Production et distribution d'électricité", "Énergie"),
    activity("Q86", "Activités pour la santé humaine", "Santé"),
    activity("P85", "Enseignement et formation", "Formation"),
    activity("N82", "Services administratifs et de soutien", "Services"),
];

/// First words of made-up trading names.
pub static NAME_PREFIXES: &[&str] = &[
    "Teranga",
    "Baobab",
    "Sahel",
    "Cap-Vert",
    "Casamance",
    "Ndar",
    "Sine-Saloum",
    "Dakar",
    "Africa",
    "Sénégal",
    "Kaay",
    "Yoonu",
    "Jàmm",
    "Niokolo",
    "Gorée",
    "Lac Rose",
    "Ferlo",
    "Ndiambour",
    "Walo",
    "Kajoor",
];

/// Words for GIEs (economic interest groups), often cooperatives.
pub static GIE_WORDS: &[&str] = &[
    "Jappoo",
    "Ligguey",
    "Book Jom",
    "Mbolo",
    "Dimbali",
    "And Liggey",
    "Takku Liggey",
    "Suxali",
    "Yaakaar",
    "Jokko",
];

/// Streets and places for registered offices.
pub static STREETS: &[&str] = &[
    "avenue Léopold Sédar Senghor",
    "avenue Cheikh Anta Diop",
    "avenue Blaise Diagne",
    "avenue Lamine Guèye",
    "avenue Bourguiba",
    "boulevard de la République",
    "boulevard du Général de Gaulle",
    "rue Carnot",
    "rue Félix Faure",
    "rue Vincens",
    "route de Rufisque",
    "route des Niayes",
    "route nationale 1",
    "route nationale 2",
    "avenue El Hadji Malick Sy",
    "rue de la Mosquée",
    "quartier Escale",
    "zone industrielle",
    "cité Keur Gorgui",
    "Sacré-Cœur 3",
];
