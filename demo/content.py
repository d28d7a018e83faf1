"""What the demo's chat sessions say: HR questions and answers in English, German, Dutch and French.

Each topic has, per language, an opening question, the assistant's answer, a follow-up question and its answer.
A ``\\n`` inside a text makes the message span two lines in the transcript (a continuation line, no prefix).
"""

from __future__ import annotations

LANGUAGE_NAMES = {
    "en": ("english", "English"),
    "de": ("german", "German"),
    "nl": ("dutch", "Dutch"),
    "fr": ("french", "French"),
}

# topic -> language -> (question, answer, follow-up question, follow-up answer)
TOPICS: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "Vacation": {
        "en": (
            "How many vacation days do I have left this year?",
            "You have 12 vacation days left for this year.\nYou can see the balance in the leave portal.",
            "Can I take leave in the first week of August?",
            "Yes, submit the leave request in the portal at least two weeks in advance.",
        ),
        "de": (
            "Wie viele Urlaubstage habe ich dieses Jahr noch?",
            "Sie haben noch 12 Urlaubstage.\nDen Stand sehen Sie im Urlaubsportal.",
            "Kann ich in der ersten Augustwoche Urlaub nehmen?",
            "Ja, stellen Sie den Urlaubsantrag mindestens zwei Wochen vorher im Portal.",
        ),
        "nl": (
            "Hoeveel vakantiedagen heb ik nog over dit jaar?",
            "Je hebt nog 12 vakantiedagen.\nJe saldo staat in het verlofportaal.",
            "Mag ik in de eerste week van augustus verlof opnemen?",
            "Ja, dien de verlofaanvraag minstens twee weken vooraf in via het portaal.",
        ),
        "fr": (
            "Combien de jours de congé me reste-t-il cette année ?",
            "Il vous reste 12 jours de congés payés.\nLe solde est visible dans le portail des congés.",
            "Puis-je prendre mes vacances la première semaine d'août ?",
            "Oui, faites la demande de congé dans le portail au moins deux semaines avant.",
        ),
    },
    "Salary": {
        "en": (
            "When will my salary be paid this month?",
            "Salaries are paid on the 25th.\nYour payslip is available two days earlier.",
            "Why is my payslip lower than last month?",
            "Your overtime from last month was paid then; this month has no overtime allowance.",
        ),
        "de": (
            "Wann wird mein Gehalt diesen Monat überwiesen?",
            "Das Gehalt wird am 25. überwiesen.\nDie Gehaltsabrechnung gibt es zwei Tage vorher.",
            "Warum ist meine Lohnabrechnung niedriger als letzten Monat?",
            "Letzten Monat wurden Überstunden ausgezahlt; diesen Monat gibt es keine Zulage.",
        ),
        "nl": (
            "Wanneer wordt mijn salaris deze maand uitbetaald?",
            "Het salaris wordt op de 25e betaald.\nJe loonstrook staat twee dagen eerder klaar.",
            "Waarom is mijn loonstrook lager dan vorige maand?",
            "Vorige maand is je overwerk uitbetaald; deze maand is er geen toeslag.",
        ),
        "fr": (
            "Quand mon salaire sera-t-il versé ce mois-ci ?",
            "Les salaires sont versés le 25.\nVotre fiche de paie est disponible deux jours avant.",
            "Pourquoi ma fiche de paie est-elle plus basse que le mois dernier ?",
            "Vos heures supplémentaires ont été payées le mois dernier ; ce mois-ci il n'y a pas de prime.",
        ),
    },
    "Sick leave": {
        "en": (
            "I am sick today, how do I report sick leave?",
            "Call your team leader before 9:00 and register the sick report in the app.",
            "Do I need a doctor's note if I am ill for three days?",
            "A doctor's note is needed from the fourth day of illness.",
        ),
        "de": (
            "Ich bin heute krank, wie melde ich mich krank?",
            "Rufen Sie vor 9 Uhr Ihre Teamleitung an\nund tragen Sie die Krankmeldung in der App ein.",
            "Brauche ich eine Krankschreibung, wenn ich drei Tage krank bin?",
            "Eine ärztliche Bescheinigung brauchen Sie ab dem vierten Krankheitstag.",
        ),
        "nl": (
            "Ik ben vandaag ziek, hoe meld ik me ziek?",
            "Bel voor 9:00 je leidinggevende\nen registreer de ziekmelding in de app.",
            "Heb ik een doktersverklaring nodig als ik drie dagen ziek ben?",
            "Een verklaring van de huisarts is nodig vanaf de vierde ziektedag.",
        ),
        "fr": (
            "Je suis malade aujourd'hui, comment déclarer un arrêt maladie ?",
            "Appelez votre responsable d'équipe avant 9h\net enregistrez l'arrêt maladie dans l'application.",
            "Faut-il un certificat médical si je suis malade trois jours ?",
            "Un certificat médical est demandé à partir du quatrième jour de maladie.",
        ),
    },
    "Schedule": {
        "en": (
            "Where can I see my work schedule for next week?",
            "Your roster for next week is published in the planning app every Thursday.",
            "Can I swap my Saturday shift with a colleague?",
            "Yes, a shift swap is possible if your team leader approves it in the app.",
        ),
        "de": (
            "Wo sehe ich meinen Dienstplan für nächste Woche?",
            "Der Dienstplan für die nächste Woche erscheint jeden Donnerstag in der Planungs-App.",
            "Kann ich meine Samstagsschicht mit einem Kollegen tauschen?",
            "Ja, ein Schichttausch ist möglich, wenn die Teamleitung ihn in der App genehmigt.",
        ),
        "nl": (
            "Waar kan ik mijn rooster voor volgende week zien?",
            "Het rooster voor volgende week staat elke donderdag in de planningsapp.",
            "Kan ik mijn zaterdagdienst ruilen met een collega?",
            "Ja, een dienst ruilen kan als je leidinggevende het goedkeurt in de app.",
        ),
        "fr": (
            "Où puis-je voir mon planning de la semaine prochaine ?",
            "Le planning de la semaine prochaine est publié chaque jeudi dans l'application.",
            "Puis-je échanger mon service du samedi avec un collègue ?",
            "Oui, l'échange d'horaires est possible si votre responsable l'approuve.",
        ),
    },
    "Login": {
        "en": (
            "I cannot log in to the employee portal, my password does not work. What should I do?",
            "Use 'Forgot password' on the login page;\nyou will receive a reset link by e-mail.",
            "The reset link says my account is locked, can you unlock it?",
            "Your account unlocks automatically after 30 minutes; try logging in again then.",
        ),
        "de": (
            "Ich kann mich nicht im Mitarbeiterportal anmelden, mein Passwort funktioniert nicht. Was tun?",
            "Nutzen Sie 'Passwort vergessen' auf der Anmeldeseite;\nSie bekommen einen Link per E-Mail.",
            "Der Link sagt, mein Konto ist gesperrt, können Sie es entsperren?",
            "Das Konto wird nach 30 Minuten automatisch entsperrt; melden Sie sich dann erneut an.",
        ),
        "nl": (
            "Ik kan niet inloggen op het medewerkersportaal, mijn wachtwoord werkt niet. Wat moet ik doen?",
            "Gebruik 'Wachtwoord vergeten' op de inlogpagina;\nje krijgt een link per e-mail.",
            "De link zegt dat mijn account geblokkeerd is, kun je het deblokkeren?",
            "Je account wordt na 30 minuten automatisch vrijgegeven; log daarna opnieuw in.",
        ),
        "fr": (
            "Je n'arrive pas à me connecter au portail, mon mot de passe ne marche pas. Que faire ?",
            "Utilisez 'Mot de passe oublié' sur la page de connexion ;\nvous recevrez un lien par e-mail.",
            "Le lien dit que mon compte est bloqué, pouvez-vous le débloquer ?",
            "Le compte se débloque automatiquement après 30 minutes ; reconnectez-vous ensuite.",
        ),
    },
    "Onboarding": {
        "en": (
            "It is my first day next Monday, what do I need to bring for onboarding?",
            "Bring your ID and bank details.\nYour onboarding starts at 9:00 at the reception.",
            "Who will be my buddy during the first week?",
            "Your team leader assigns a buddy on your first day.",
        ),
        "de": (
            "Nächsten Montag ist mein erster Arbeitstag, was muss ich zur Einarbeitung mitbringen?",
            "Bringen Sie Ihren Ausweis und Ihre Bankdaten mit.\nDie Einarbeitung beginnt um 9 Uhr am Empfang.",
            "Wer ist in der ersten Woche mein Pate?",
            "Ihre Teamleitung teilt Ihnen am ersten Tag einen Paten zu.",
        ),
        "nl": (
            "Volgende maandag is mijn eerste werkdag, wat moet ik meenemen voor de onboarding?",
            "Neem je ID-bewijs en bankgegevens mee.\nDe inwerkdag begint om 9:00 bij de receptie.",
            "Wie is mijn buddy in de eerste week?",
            "Je leidinggevende wijst je op de eerste dag een buddy toe.",
        ),
        "fr": (
            "Je commence lundi prochain, que dois-je apporter pour mon intégration ?",
            "Apportez votre pièce d'identité et votre RIB.\nL'accueil des nouveaux commence à 9h.",
            "Qui sera mon parrain pendant la première semaine ?",
            "Votre responsable vous attribue un parrain le premier jour.",
        ),
    },
    "Workwear": {
        "en": (
            "Where can I get a new uniform and a staff pass?",
            "Workwear and staff passes are handed out at the facility desk on weekdays.",
            "My uniform jacket is torn, can I exchange it?",
            "Yes, bring the old jacket to the facility desk and you get a new one.",
        ),
        "de": (
            "Wo bekomme ich neue Arbeitskleidung und einen Mitarbeiterausweis?",
            "Arbeitskleidung und Ausweise gibt es werktags am Servicepunkt.",
            "Meine Dienstjacke ist kaputt, kann ich sie umtauschen?",
            "Ja, bringen Sie die alte Jacke zum Servicepunkt, dann bekommen Sie eine neue.",
        ),
        "nl": (
            "Waar kan ik nieuwe werkkleding en een personeelspas krijgen?",
            "Werkkleding en personeelspassen krijg je op werkdagen bij de facilitaire balie.",
            "Mijn jas van het uniform is kapot, kan ik die ruilen?",
            "Ja, breng de oude jas naar de balie en je krijgt een nieuwe.",
        ),
        "fr": (
            "Où puis-je obtenir une nouvelle tenue de travail et un badge ?",
            "Les tenues et les badges sont remis à l'accueil logistique en semaine.",
            "Ma veste d'uniforme est déchirée, puis-je l'échanger ?",
            "Oui, rapportez l'ancienne veste à l'accueil et vous en recevrez une neuve.",
        ),
    },
    "Contract hours": {
        "en": (
            "Can I change my contract hours from 24 to 32 hours per week?",
            "A change of contract hours is possible;\ndiscuss it with your team leader first.",
            "Will my new contract start next month?",
            "The contract change starts on the first of the month after approval.",
        ),
        "de": (
            "Kann ich meine Vertragsstunden von 24 auf 32 Stunden pro Woche erhöhen?",
            "Eine Änderung der Vertragsstunden ist möglich;\nsprechen Sie zuerst mit Ihrer Teamleitung.",
            "Gilt mein neuer Arbeitsvertrag ab nächstem Monat?",
            "Die Vertragsänderung gilt ab dem Ersten des Monats nach der Genehmigung.",
        ),
        "nl": (
            "Kan ik mijn contracturen aanpassen van 24 naar 32 uur per week?",
            "Een wijziging van je contracturen is mogelijk;\nbespreek het eerst met je leidinggevende.",
            "Gaat mijn nieuwe contract volgende maand in?",
            "De contractwijziging gaat in op de eerste van de maand na goedkeuring.",
        ),
        "fr": (
            "Puis-je passer mon contrat de 24 à 32 heures par semaine ?",
            "Un changement d'heures contractuelles est possible ;\nparlez-en d'abord à votre responsable.",
            "Mon nouveau contrat commence-t-il le mois prochain ?",
            "La modification du contrat prend effet le premier du mois après accord.",
        ),
    },
}

GREETING = {"en": "Hello!", "de": "Hallo!", "nl": "Hoi!", "fr": "Bonjour !"}
THANKS = {
    "en": "Thanks, that helps.",
    "de": "Danke, das hilft mir.",
    "nl": "Bedankt, dat helpt.",
    "fr": "Merci, ça m'aide.",
}
WELCOME = {
    "en": "You're welcome, have a nice day!",
    "de": "Gern geschehen, schönen Tag noch!",
    "nl": "Graag gedaan, fijne dag!",
    "fr": "Avec plaisir, bonne journée !",
}
FRUSTRATED = {
    "en": "This is really frustrating, nobody answers my e-mails.",
    "de": "Das ist wirklich ärgerlich, niemand antwortet auf meine E-Mails.",
    "nl": "Dit is echt frustrerend, niemand beantwoordt mijn e-mails.",
    "fr": "C'est vraiment frustrant, personne ne répond à mes e-mails.",
}
ESCALATE = {
    "en": "I want to speak to a manager about this.",
    "de": "Ich möchte mit einem Vorgesetzten darüber sprechen.",
    "nl": "Ik wil hierover met een manager spreken.",
    "fr": "Je veux parler à un responsable à ce sujet.",
}
ESCALATE_REPLY = {
    "en": "I understand. I have asked your manager to call you back today.",
    "de": "Verstanden. Ich habe Ihren Vorgesetzten gebeten, Sie heute zurückzurufen.",
    "nl": "Begrepen. Ik heb je manager gevraagd je vandaag terug te bellen.",
    "fr": "Je comprends. J'ai demandé à votre responsable de vous rappeler aujourd'hui.",
}
HR_FORWARD = {
    "en": "I will forward your question to HR.\nYou can also reach HR at hr@example.com or 020 555 0100.",
    "de": "Ich leite Ihre Frage an die Personalabteilung weiter.\n"
    "Sie erreichen die Personalabteilung auch unter personal@example.com.",
    "nl": "Ik stuur je vraag door naar HR.\nJe kunt personeelszaken ook bellen op 020 555 0100.",
    "fr": "Je transmets votre question aux RH.\nVous pouvez aussi écrire aux RH à rh@example.com.",
}
SENTIMENTS_GOOD = ("happy", "excited", "satisfied", "neutral")
SENTIMENTS_BAD = ("frustrated", "angry", "annoyed")
