"""The ISIC Archive vocabulary: diagnosis terms, malignancy values and site spellings, mapped to ours.

The archive's hierarchical ``diagnosis_1..5`` terms (and the legacy ``diagnosis`` field) map to the
eight diagnosis codes of :data:`backend.data.schema.DIAGNOSES` or to :data:`OTHER`; a term missing
here is never dropped silently by :mod:`backend.data.formats.isic_archive` (it warns, or fails with
``strict=True``), so a new archive term is one line here.
"""

from __future__ import annotations

#: Code of ISIC terms that are none of the eight diagnoses (benign -> UNK, malignant -> no diagnosis).
OTHER = "OTHER"

#: Diagnosis code -> ISIC Archive terms (hierarchical ``diagnosis_1..3`` and legacy ``diagnosis``).
DIAGNOSIS_TERMS: dict[str, tuple[str, ...]] = {
    "MEL": ("Malignant melanocytic proliferations (Melanoma)", "Melanoma Invasive", "Melanoma in situ",
            "Melanoma, NOS", "Melanoma metastasis", "melanoma"),
    "NV": ("Benign melanocytic proliferations", "Nevus", "nevus spilus"),
    "BCC": ("Malignant adnexal epithelial proliferations - Follicular", "Basal cell carcinoma"),
    "AK": ("Indeterminate epidermal proliferations", "Solar or actinic keratosis", "Solar or actinic cheilitis",
           "actinic keratosis"),
    "BKL": ("Benign epidermal proliferations", "Seborrheic keratosis", "Solar lentigo", "Lichen planus like keratosis",
            "Pigmented benign keratosis", "Melanoacanthoma", "lichenoid keratosis"),
    "DF": ("Dermatofibroma",),
    "VASC": ("Benign soft tissue proliferations - Vascular", "Hemorrhagic lesions", "Hemorrhage",
             "Acquired elastotic hemangioma", "Acroangiodermatitis of Mali", "Angiokeratoma",
             "Angiolymphoid hyperplasia with eosinophilia", "Arterio-venous malformation",
             "Capillary vascular malformation", "Glomangiomyoma", "Glomeruloid hemangioma", "Glomus tumor",
             "Hemangioma", "Lymphangioma", "Nevus anemicus", "Noninvoluting congenital hemangioma",
             "Other vascular or lymphatic malformation or hamartoma", "Pyogenic granuloma",
             "Rapidly involuting congenital hemangioma", "Telangiectasia", "Vascular spider", "Venous lake",
             "Venous malformation", "Verrucous hemangioma", "angioma", "vascular lesion"),
    "SCC": ("Malignant epidermal proliferations", "Squamous cell carcinoma, NOS", "Squamous cell carcinoma in situ",
            "Squamous cell carcinoma, Invasive", "Keratoacanthoma", "Bowenoid papulosis", "Verrucous carcinoma",
            "squamous cell carcinoma"),
    OTHER: (
        # diagnosis_1
        "Benign", "Malignant", "Indeterminate",
        # diagnosis_2 families that are none of the eight
        "Benign - Other", "Benign adnexal epithelial proliferations - Apocrine or Eccrine",
        "Benign adnexal epithelial proliferations - Follicular", "Benign adnexal epithelial proliferations - Sebaceous",
        "Benign soft tissue proliferations - Adipocytic", "Benign soft tissue proliferations - Cartilagenous and "
        "ossifying", "Benign soft tissue proliferations - Fibro-histiocytic", "Benign soft tissue proliferations - "
        "Muscle tissue or myofibroblastic", "Benign soft tissue proliferations - Myoepithelial",
        "Benign soft tissue proliferations - Neural", "Collision - Only benign proliferations", "Cysts", "Exogenous",
        "Flat melanotic pigmentations - not melanocytic nevus", "Inflammatory or infectious diseases",
        "Langerhans cell proliferations", "Mast cell proliferations", "Indeterminate melanocytic proliferations",
        "Collision - At least one malignant proliferation", "Lymphocytic proliferations - B-Cell",
        "Lymphocytic proliferations - T-Cell/NK", "Malignant adnexal epithelial proliferations - Apocrine or Eccrine",
        "Malignant adnexal epithelial proliferations - Sebaceous", "Malignant soft tissue proliferations - Adipocytic",
        "Malignant soft tissue proliferations - Cartilagenous and ossifying",
        "Malignant soft tissue proliferations - Fibro-histiocytic",
        "Malignant soft tissue proliferations - Muscle tissue or myofibroblastic",
        "Malignant soft tissue proliferations - Myoepithelial", "Malignant soft tissue proliferations - Neural",
        "Malignant soft tissue proliferations - Unknown or other histiogenesis",
        "Malignant soft tissue proliferations - Vascular", "Merkel cell proliferation",
        "Skin metastasis of internal solid cancer - non-hematological",
        # diagnosis_3, benign
        "Apocrine tubular adenoma", "Cylindoma", "Cystadenoma", "Fibroadenoma", "Hidradenoma papilliferum",
        "Hidradenoma, Apocrine", "Hidradenoma", "Mixed tumor", "Poroma", "Spiradenoma", "Supernumerary nipple",
        "Syringocystadenoma papilliferum", "Syringofibroadenoma", "Syringoma", "Folliculosebaceous cystic hamartoma",
        "Nevus comedonicus", "Panfolliculoma", "Pilar sheath acanthoma", "Pilomatricoma",
        "Proliferating tricholemmal tumor", "Trichoblastoma", "Trichoepithelioma", "Trichofolliculoma",
        "Tricholemmoma", "Tumor of follicular infundibulum", "Warty dyskeratoma", "Fibrofolliculoma", "Fordyce spots",
        "Nevus sebaceus", "Sebaceoma", "Sebaceous adenoma", "Sebaceous hyperplasia", "Trichodiscoma",
        "Acantholytic acanthoma", "Clear cell acanthoma", "Epidermal nevus", "Epidermolytic acanthoma",
        "Large cell acanthoma", "Porokeratosis", "Dermal melanocytosis", "Lentiginous melanocytic proliferation",
        "Lentigo simplex", "Pigmented epithelioid melanocytoma",
        "Proliferative nodule in congenital melanocytic nevi without atypia", "Angiolipoma", "Fibrolipoma", "Lipoma",
        "Lipomatous nevus", "Accessory tragus", "Extraskeletal chondroma", "Osteoma cutis", "Subungual osteochodroma",
        "Angiofibroma", "Fibroepithelial polyp", "Fibroma", "Giant cell tumor of the tendon sheath",
        "Juvenile xanthogranuloma", "Cutaneous Myxoma", "Non-Langerhans histiocytosis", "Reticulohistiocytosis",
        "Rosai-Dorfman disease", "Scar", "Angioleiomyoma", "Dartoic muscle leiomyoma", "Dermatomyofibroma",
        "Nodular Fasciitis", "Piloleiomyoma", "Smooth muscle hamartoma", "Myoepithelioma", "Granular cell tumor",
        "Nerve sheath myxoma", "Neurofibroma", "Plexiform Neurofibroma", "Neuroma", "Perineurioma", "Schwannoma",
        "Comedo", "Digital mucous cyst", "Dilated pore", "Infundibular or epidermal cyst", "Sebaceous cyst",
        "Keratinous cyst", "Milium", "Steatocystoma", "Trichilemmal or isthmic-catagen or pilar cyst",
        "Foreign body granuloma", "Tattoo", "Cafe au lait macule or patch", "Ephelis", "Ink-spot lentigo",
        "Lentigo NOS", "Mucosal melanotic macule", "Verruca", "Molluscum", "Erdheim Chester disease",
        "Indeterminate cell histiocytosis", "Langerhans cell histiocytosis",
        "Mixed Langerhans cell histiocytosis and Erdheim Chester disease", "Maculopapular mastocytoma",
        "Mastocytoma, Solitary or unifocal", "Mastocytosis",
        # diagnosis_3, indeterminate
        "Atypical Spitz tumor", "Atypical intraepithelial melanocytic proliferation", "Atypical melanocytic neoplasm",
        "Atypical pigmented spindle cell tumor", "Atypical proliferative nodules in congenital melanocytic nevus",
        "Melanocytic tumor of uncertain malignant potential",
        "Superficial atypical melanocytic proliferation of uncertain significance",
        # diagnosis_3, malignant
        "EBV positive mucocutaneous ulcer", "Intravascular large B-cell lymphoma",
        "Lymphocytic proliferation, B-Cell, other", "Primary cutaneous follicle center lymphoma",
        "Primary cutaneous large B-Cell lymphoma", "Primary cutaneous marginal zone lymphoma",
        "Adult T-cell leukemia or lymphoma", "Chronic active EBV infection", "Extranodal T-cell/NK lymphoma",
        "Lymphocytic proliferation, T-Cell/NK", "Mycosis fungoides", "Primary cutaneous CD30+ lymphoproliferative "
        "disease", "Primary cutaneous CD4+ small or medium T-cell lymphoproliferative disorder",
        "Primary cutaneous peripheral T-cell lymphoma", "Sezary syndrome",
        "Subcutaneous panniculitis-like T-cell lymphoma", "Adenoid cystic carcinoma",
        "Adnexal adenocarcinoma arising in association with spiradenoma, cylindroma, or spiradenocylindroma",
        "Apocrine carcinoma", "Digital papillary carcinoma", "Hidradenocarcinoma", "Malignant mixed tumor",
        "Microcystic adnexal carcinoma", "Mucinous carcinoma", "Paget disease", "Porocarcinoma", "Tubular carcinoma",
        "Baso-squamous carcinoma", "Matrical or pilomatrical carcinoma", "Proliferating trichilemmal carcinoma",
        "Sebaceous carcinoma", "Liposarcoma", "Extraskeletal osteosarcoma", "Atypical fibroxanthoma",
        "Dermatofibrosarcoma protuberans", "Epithelioid sarcoma", "Fibrosarcoma", "Pleomorphic undifferntiated sarcoma",
        "Atypical intradermal smooth muscle tumor", "Leiomyosarcoma, Cutaneous", "Rhabdomyoscaroma, Cutaneous",
        "Myoepithelial sarcoma", "Malignant granular cell tumor", "Malignant peripheral nerve sheath tumor",
        "Ewing sarcoma, Primary cutaenous", "Angiosarcoma cutaneous", "Hemangioendothelioma", "Kaposi sarcoma",
        "Malignant glomus tumor", "Merkel cell carcinoma",
        # legacy ``diagnosis``
        "adnexal tumor", "AIMP", "cafe-au-lait macule", "mucosal melanosis", "acrochordon",
        "angiofibroma or fibrous papule", "atypical melanocytic proliferation", "other",
    ),
}


def _build_map(terms: dict[str, tuple[str, ...]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for code, names in terms.items():
        for name in names:
            key = name.strip().lower()
            if out.get(key, code) != code:
                raise ValueError(f"ISIC term {name!r} is mapped to both {out[key]} and {code}")
            out[key] = code
    return out


#: Lower-cased ISIC term -> diagnosis code or :data:`OTHER` (built from :data:`DIAGNOSIS_TERMS`).
DIAGNOSIS_MAP: dict[str, str] = _build_map(DIAGNOSIS_TERMS)

#: ``benign_malignant`` / ``diagnosis_1`` value -> label (None: indeterminate, malignancy unknown).
BENIGN_MALIGNANT: dict[str, int | None] = {"benign": 0, "malignant": 1, "indeterminate": None,
                                          "indeterminate/benign": 0, "indeterminate/malignant": 1}
#: ``diagnosis_1`` value -> label (None: indeterminate).
DIAGNOSIS_1_LABELS: dict[str, int | None] = {"benign": 0, "malignant": 1, "indeterminate": None}
#: ``mel_class`` values of melanoma in situ (Breslow thickness 0 mm).
IN_SITU_CLASSES = frozenset({"melanoma in situ", "recurrent/persistent melanoma, in situ"})

#: Hierarchical ``anatom_site_1..3`` spellings that :data:`backend.data.sites.SITE_ALIASES` lacks.
HIERARCHICAL_SITE_ALIASES: dict[str, str] = {
    "anogenital region": "oral/genital",
    "genital region": "oral/genital",
    "perianal region": "oral/genital",
    "anterior trunk": "anterior torso",
    "posterior trunk": "posterior torso",
    "lateral trunk": "lateral torso",
    "palm of hand": "palms/soles",
    "sole of foot": "palms/soles",
}
