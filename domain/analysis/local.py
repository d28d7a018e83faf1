"""The offline analysis provider: deterministic keyword rules, no network, no key, thousands of sessions a second.

It answers the same questions as the model, in the same shape, and its answer goes through the same
:class:`~domain.analysis.schema.SessionAnalysis` validation:

* language: the most stop-word hits in the user's messages (en, de, nl, fr, es, it; English when none hit);
* sentiment: positive minus negative words (a plain "thanks" is polite, not yet positive);
* category: the most keyword hits among the 13 categories in any of the six languages, UNRECOGNIZED_OTHER
  when nothing matches; ties go to the category listed first in :data:`CATEGORY_KEYWORDS`;
* escalated: someone asked for (or was promised) a manager or supervisor, or a complaint was filed;
* forwarded_hr: HR (Personalabteilung, personeelszaken, RH, ...) was mentioned together with a way to reach it;
* questions: the user's sentences ending in "?", at most five; summary: language, topic and opening request.

Rules are plain data: extend a list and every transcript in that language benefits.
"""

from __future__ import annotations

import re
from collections import Counter

from domain.analysis.prompt import Transcript
from domain.analysis.schema import SUMMARY_MAX, SessionAnalysis
from domain.model import Category, Sentiment


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


MODEL_NAME = "local"  # priced at 0 in ai_model_pricing

STOP_WORDS: dict[str, frozenset[str]] = {
    "en": _words(
        "the and is are you i my me to of it for can how what when do does have has will would with this that "
        "please thanks thank hello hi not be on at your an was"
    ),
    "de": _words(
        "der die das und ist ich nicht sie wie mein meine ein eine kann können wann bitte danke hallo mit für "
        "auf zu wir ihr haben habe ich's es dem den bin sind was wo warum noch auch schon"
    ),
    "nl": _words(
        "de het een en is ik niet je jij mijn kan kunnen wanneer alstublieft alsjeblieft bedankt dank hoi hallo "
        "met voor op te wij we hebben heb wat waar waarom ook nog zijn er dat van u uw"
    ),
    "fr": _words(
        "le la les et est je ne pas vous mon ma mes un une peux pouvez quand merci bonjour avec pour sur nous "
        "avoir ai suis est-ce que qui où pourquoi aussi des du au de il elle me ce cette à ça votre vos mais ou"
    ),
    "es": _words(
        "el la los las y es yo no usted mi mis un una puedo puede cuándo cuando gracias hola con para en nosotros "
        "tengo qué dónde por porque también del al"
    ),
    "it": _words(
        "il lo la gli le e è io non lei mio mia un una posso può quando grazie ciao buongiorno con per su noi ho "
        "che dove perché anche del della"
    ),
}

LANGUAGE_NAMES = {"en": "English", "de": "German", "nl": "Dutch", "fr": "French", "es": "Spanish", "it": "Italian"}

# Word starts (stems) per category; a keyword matches at the start of a word, so "vacation" also finds
# "vacations" and "krank" finds "Krankmeldung". Multi-word keywords match across single spaces.
CATEGORY_KEYWORDS: dict[Category, tuple[str, ...]] = {
    Category.SICK_LEAVE_RECOVERY: (
        "sick", "ill ", "illness", "doctor", "recover", "flu", "fever", "medical certificate",
        "krank", "arzt", "genesung", "attest", "ziek", "dokter", "huisarts", "hersteld", "beterschap",
        "malade", "maladie", "médecin", "arrêt maladie", "guéri", "enfermo", "enfermedad", "baja médica",
        "malato", "malattia", "medico",
    ),
    Category.LEAVE_VACATION: (
        "vacation", "holiday", "annual leave", "days off", "day off", "time off", "pto", "leave request",
        "urlaub", "ferien", "urlaubstag", "freie tage", "vakantie", "verlof", "vrije dag", "vrij nemen",
        "congé", "conges", "vacances", "jours de repos", "vacaciones", "días libres", "ferie", "permesso",
    ),
    Category.SALARY_COMPENSATION: (
        "salary", "pay", "payslip", "paycheck", "wage", "bonus", "overtime pay", "reimburse", "expense",
        "gehalt", "lohn", "gehaltsabrechnung", "lohnabrechnung", "vergütung", "auszahlung",
        "salaris", "loon", "loonstrook", "uitbetal", "vakantiegeld", "declaratie",
        "salaire", "paie", "fiche de paie", "rémunération", "prime", "sueldo", "salario", "nómina",
        "stipendio", "busta paga",
    ),
    Category.CONTRACT_HOURS: (
        "contract", "hours per week", "part-time", "part time", "full-time", "full time", "probation",
        "vertrag", "arbeitsvertrag", "teilzeit", "vollzeit", "wochenstunden", "probezeit",
        "contract", "uren per week", "deeltijd", "voltijd", "proeftijd", "contrat", "temps partiel",
        "temps plein", "période d'essai", "contrato", "jornada", "contratto",
    ),
    Category.SCHEDULE_HOURS: (
        "schedule", "shift", "roster", "rota", "working hours", "work hours", "timesheet", "clock in",
        "dienstplan", "schicht", "arbeitszeit", "rooster", "dienst", "werktijden", "planning", "diensten",
        "horaire", "planning", "équipe de nuit", "horario", "turno", "orario",
    ),
    Category.ONBOARDING: (
        "onboarding", "first day", "first week", "new employee", "new hire", "start date", "starting date",
        "induction", "welcome pack", "einarbeitung", "erster arbeitstag", "ersten arbeitstag", "neuer mitarbeiter",
        "eerste werkdag", "inwerk", "nieuwe medewerker", "premier jour", "intégration", "nouvel employé",
        "primer día", "incorporación", "primo giorno", "inserimento",
    ),
    Category.OFFBOARDING: (
        "resign", "resignation", "notice period", "quit", "last day", "last working day", "termination",
        "leaving the company", "exit interview", "kündig", "letzter arbeitstag", "austritt",
        "ontslag", "opzeg", "laatste werkdag", "uit dienst", "démission", "préavis", "dernier jour",
        "quitter l'entreprise", "dimisión", "renuncia", "dimission", "ultimo giorno",
    ),
    Category.WORKWEAR_STAFF_PASS: (
        "uniform", "workwear", "work clothes", "staff pass", "badge", "id card", "access card", "shoes",
        "safety boots", "arbeitskleidung", "dienstkleidung", "mitarbeiterausweis", "ausweis",
        "werkkleding", "bedrijfskleding", "personeelspas", "pasje", "tenue", "vêtements de travail",
        "carte d'accès", "uniforme", "ropa de trabajo", "tarjeta", "divisa", "tesserino",
    ),
    Category.ACCESS_LOGIN: (
        "login", "log in", "password", "account", "locked out", "two-factor", "2fa", "portal", "app ",
        "passwort", "anmelden", "anmeldung", "zugang", "konto", "gesperrt", "wachtwoord", "inlog",
        "account", "toegang", "mot de passe", "connexion", "identifiant", "compte", "contraseña",
        "acceso", "cuenta", "accesso",
    ),
    Category.TEAM_CONTACTS: (
        "team lead", "team leader", "my manager", "contact person", "colleague", "phone number",
        "who is my", "reach my", "ansprechpartner", "teamleiter", "kollege", "kollegin", "telefonnummer",
        "leidinggevende", "teamleider", "collega", "contactpersoon", "telefoonnummer", "responsable",
        "collègue", "chef d'équipe", "numéro de téléphone", "compañero", "jefe de equipo", "collega",
    ),
    Category.PERSONAL_QUESTIONS: (
        "address change", "change my address", "new address", "personal details", "personal data",
        "bank account", "name change", "marital", "emergency contact", "tax", "adresse", "adressänderung",
        "bankverbindung", "persönliche daten", "steuer", "adreswijziging", "verhuis", "rekeningnummer",
        "persoonsgegevens", "belasting", "changement d'adresse", "coordonnées bancaires", "données personnelles",
        "dirección", "cuenta bancaria", "indirizzo",
    ),
    Category.SOCIAL_QUESTIONS: (
        "party", "team event", "company event", "outing", "drinks", "christmas", "birthday", "barbecue",
        "firmenfeier", "weihnachtsfeier", "betriebsausflug", "feier", "personeelsfeest", "uitje", "borrel",
        "kerstborrel", "fête", "soirée", "événement", "sortie d'équipe", "fiesta", "evento", "festa",
    ),
}  # fmt: skip

POSITIVE = (
    "great", "perfect", "excellent", "awesome", "wonderful", "helpful", "happy", "glad", "appreciate",
    "amazing", "fantastic", "love", "super", "prima", "toll", "wunderbar", "hilfreich", "froh", "klasse",
    "geweldig", "fijn", "top", "blij", "handig", "parfait", "génial", "formidable", "ravi", "excelente",
    "genial", "perfecto", "ottimo", "perfetto", "fantastico",
)  # fmt: skip
# Politeness: half a point each, so "thanks" alone stays NEUTRAL but "thanks, that's helpful" is POSITIVE.
POLITE = ("thank", "thanks", "danke", "vielen dank", "bedankt", "dank je", "dank u", "merci", "gracias", "grazie")
NEGATIVE = (
    "angry", "annoyed", "frustr", "terrible", "awful", "unacceptable", "ridiculous", "disappoint", "useless",
    "upset", "worst", "complain", "not happy", "still not", "unfair", "bad ", "hate",
    "beschwerde", "klacht", "plainte", "queja",
    "ärger", "verärgert", "enttäusch", "unverschämt", "schlecht", "frustriert", "unzufrieden", "nutzlos",
    "boos", "teleurgesteld", "slecht", "belachelijk", "onacceptabel", "ontevreden", "waardeloos",
    "fâché", "déçu", "inacceptable", "nul", "mécontent", "enfadado", "decepcionado", "inaceptable",
    "arrabbiato", "deluso", "inaccettabile",
)  # fmt: skip
ESCALATION = (
    r"escalat", r"complaint", r"complain", r"supervisor",
    r"(?:speak|talk) (?:to|with) (?:a |the |my |your )?(?:manager|human|real person|someone in charge)",
    r"beschwerde", r"vorgesetzt", r"eskalier", r"(?:mit|den) (?:dem |einem )?chef",
    r"klacht", r"escaleer", r"leidinggevende (?:spreken|bellen)",
    r"(?:manager|leidinggevende|vorgesetzten|chef|responsable|supervisor|superviseur)\b.{0,20}"
    r"(?:spreken|sprechen|parler|hablar|parlare)", r"\bplainte", r"réclamation",
    r"superviseur", r"parler à (?:un |mon |votre )?(?:responsable|manager)", r"reclamación", r"queja",
    r"supervisor", r"reclamo",
)  # fmt: skip
HR_NAMES = (
    r"\bhr\b(?!\.\s)", r"human resources", r"personalabteilung", r"personalbüro", r"personeelszaken", r"\bp&o\b",
    r"ressources humaines", r"\brh\b", r"recursos humanos", r"risorse umane",
)  # fmt: skip
# Word starts, plus an e-mail address or a phone number anywhere.
HR_REACH = (
    r"contact", r"kontakt", r"email", r"e-mail", r"mail", r"phone", r"call",
    r"telefon", r"bel ", r"bellen", r"appel", r"écri", r"reach", r"erreich", r"wenden", r"forward", r"weiterleit",
    r"doorsturen", r"doorverwijz", r"transmet", r"llam", r"escrib", r"chiama", r"scriv", r"extension", r"ext\.",
)  # fmt: skip
_ADDRESS_OR_NUMBER = r"@|\+?\d[\d /-]{6,}\d"

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
_SENTENCE = re.compile(r"[^.!?\n]*\?+")


def _alternation(words: tuple[str, ...], *, regex: bool = False) -> str:
    parts = words if regex else tuple(re.escape(w.strip()) + (r"\b" if w.endswith(" ") else "") for w in words)
    return "|".join(sorted(set(parts), key=len, reverse=True))


_CATEGORY_ORDER = list(CATEGORY_KEYWORDS)
_CATEGORY_PATTERN = re.compile(
    "|".join(
        rf"(?P<c{index}>(?<!\w)(?:{_alternation(words)}))" for index, words in enumerate(CATEGORY_KEYWORDS.values())
    )
)
_POSITIVE = re.compile(rf"(?<!\w)(?:{_alternation(POSITIVE)})")
_POLITE = re.compile(rf"(?<!\w)(?:{_alternation(POLITE)})")
_NEGATIVE = re.compile(rf"(?<!\w)(?:{_alternation(NEGATIVE)})")
_NEGATED_POSITIVE = re.compile(
    r"(?<!\w)(?:not|nicht|niet|pas|no)\s+(?:very\s+|sehr\s+|erg\s+)?(?:helpful|happy|great|hilfreich|blij)"
)
_ESCALATION = re.compile(_alternation(ESCALATION, regex=True))
_HR_NAME = re.compile(_alternation(HR_NAMES, regex=True))
_HR_REACH = re.compile(rf"{_ADDRESS_OR_NUMBER}|(?<!\w)(?:{_alternation(HR_REACH, regex=True)})")

_TOPIC = {
    Category.SCHEDULE_HOURS: "work schedule and hours",
    Category.LEAVE_VACATION: "leave and vacation",
    Category.SICK_LEAVE_RECOVERY: "sick leave and recovery",
    Category.SALARY_COMPENSATION: "salary and compensation",
    Category.CONTRACT_HOURS: "contract and contract hours",
    Category.ONBOARDING: "onboarding",
    Category.OFFBOARDING: "offboarding",
    Category.WORKWEAR_STAFF_PASS: "workwear and staff pass",
    Category.TEAM_CONTACTS: "team contacts",
    Category.PERSONAL_QUESTIONS: "personal details",
    Category.ACCESS_LOGIN: "access and login",
    Category.SOCIAL_QUESTIONS: "social activities",
    Category.UNRECOGNIZED_OTHER: "an unrecognised topic",
}


def detect_language(text: str) -> str:
    """ISO 639-1 code of the language with the most stop words in ``text``; "en" when none is found."""
    counts: Counter[str] = Counter()
    for word in _WORD.findall(text.lower()):
        for code, words in STOP_WORDS.items():
            if word in words:
                counts[code] += 1
    if not counts:
        return "en"
    best = max(counts.values())
    return next(code for code in STOP_WORDS if counts[code] == best)  # ties: the order of STOP_WORDS


def detect_category(text: str) -> Category:
    counts: Counter[int] = Counter()
    for match in _CATEGORY_PATTERN.finditer(text.lower()):
        if match.lastgroup:
            counts[int(match.lastgroup[1:])] += 1
    if not counts:
        return Category.UNRECOGNIZED_OTHER
    best = max(counts.values())
    return _CATEGORY_ORDER[min(index for index, n in counts.items() if n == best)]


def detect_sentiment(text: str) -> Sentiment:
    lowered = text.lower()
    negative = len(_NEGATIVE.findall(lowered)) + len(_NEGATED_POSITIVE.findall(lowered))
    positive = (
        len(_POSITIVE.findall(lowered)) - len(_NEGATED_POSITIVE.findall(lowered)) + 0.5 * len(_POLITE.findall(lowered))
    )
    if negative and negative >= positive:
        return Sentiment.NEGATIVE
    if positive >= 1:
        return Sentiment.POSITIVE
    return Sentiment.NEUTRAL


def is_escalated(text: str) -> bool:
    return _ESCALATION.search(text.lower()) is not None


def mentions_hr_contact(messages: list[str]) -> bool:
    """HR named together with a way to reach it (an address, a number, "contact", "call", ...) in one message."""
    for message in messages:
        lowered = message.lower()
        if _HR_NAME.search(lowered) and _HR_REACH.search(lowered):
            return True
    return False


def extract_questions(user_messages: list[str], limit: int = 5) -> list[str]:
    found: list[str] = []
    for message in user_messages:
        for sentence in _SENTENCE.findall(message):
            text = " ".join(sentence.split())
            if len(text) > 1:
                found.append(text)
                if len(found) >= limit * 2:  # enough for five after duplicates are dropped
                    return found
    return found


def summarize(language: str, category: Category, user_messages: list[str], escalated: bool, hr: bool) -> str:
    # The first real request, not a greeting: the first message with a question or at least four words.
    substantial = [m for m in user_messages if "?" in m or len(m.split()) >= 4]
    opening = " ".join((substantial or user_messages or [""])[0].split())
    parts = [f"{LANGUAGE_NAMES.get(language, language)} chat about {_TOPIC[category]}"]
    if escalated:
        parts.append("escalated")
    if hr:
        parts.append("HR contact given")
    head = "; ".join(parts)
    if not opening:
        return f"{head}."
    text = f'{head}. The user wrote: "{opening}"'
    if len(text) > SUMMARY_MAX:
        text = text[: SUMMARY_MAX - 2].rstrip() + '…"'
    return text


def analyze(transcript: Transcript) -> SessionAnalysis:
    """The local provider's analysis of one transcript (with at least one message), validated."""
    user = [m.content for m in transcript.messages if m.role == "user"]
    every = [m.content for m in transcript.messages]
    user_text = "\n".join(user) if user else "\n".join(every)
    all_text = "\n".join(every)
    language = detect_language(user_text)
    category = detect_category(user_text)
    if category is Category.UNRECOGNIZED_OTHER and user:
        category = detect_category(all_text)
    escalated = is_escalated(all_text)
    hr = mentions_hr_contact(every)
    return SessionAnalysis.model_validate(
        {
            "language": language,
            "sentiment": detect_sentiment(user_text),
            "escalated": escalated,
            "forwarded_hr": hr,
            "category": category,
            "questions": extract_questions(user),
            "summary": summarize(language, category, user or every, escalated, hr),
            "session_id": transcript.session_id,
        }
    )
