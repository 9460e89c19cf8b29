"""Write the sample corpus's PDF and DOCX documents from the text held in this script.

The corpus is original text written for Sluice (license: Apache-2.0, like the project).
Output is deterministic: fixed metadata dates and fixed zip timestamps, so rerunning this
script gives byte-identical files.

Needs `python-docx` (a project dependency) and, for the PDFs, `fpdf2`, which is only a
dev-time dependency of this generator:

    .venv/bin/pip install fpdf2
    .venv/bin/python data/sample/make_binary_docs.py
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
FIXED_DATE = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
AUTHOR = "Northwind Cycles"

# Each document is a list of blocks: ("h1" | "h2" | "p" | "li", text). Plain ASCII only.

EBIKE_BATTERY_CARE = [
    ("h1", "E-Bike Battery Care"),
    ("p", "Every Northwind electric bike is powered by a Northwind PowerPack, a 36 volt lithium-ion battery with a capacity of 500 Wh. A little care goes a long way: a battery that is charged and stored correctly keeps more of its range for longer. This guide explains how to charge, ride with, clean and store your battery."),
    ("h2", "Charging"),
    ("p", "Use only the Northwind 4 amp charger supplied with your bike. A full charge from empty takes about 5 hours, and charging from 20 percent to 80 percent takes roughly 3 hours. The charger stops automatically when the battery is full, so there is no need to unplug it the moment the light turns green."),
    ("p", "Charge the battery at room temperature, ideally between 10 and 25 degrees Celsius. Never charge a battery that is below 0 degrees Celsius, because charging a frozen lithium-ion cell can permanently damage it. After a cold ride, bring the battery indoors and let it warm up for at least an hour before you plug it in."),
    ("p", "Always charge on a hard, dry surface away from anything that can burn, and never cover the charger while it is in use."),
    ("h2", "Riding in cold weather"),
    ("p", "Lithium-ion batteries deliver less energy when they are cold. In winter, expect the range of your bike to drop by up to 30 percent compared with a mild summer day. Keeping the battery indoors until just before you set off, and using a neoprene battery cover, both help to reduce the loss."),
    ("h2", "Cleaning"),
    ("p", "Clean the battery casing with a damp cloth and mild soap. Do not use a pressure washer or a garden hose on the battery or the motor, because water forced into the contacts can cause corrosion. Before you clean the bike, remove the battery and keep the terminals dry."),
    ("h2", "Long-term storage"),
    ("p", "If you will not ride for more than a few weeks, store the battery at a charge level between 40 and 60 percent, in a cool and dry place indoors. Check the charge level every 3 months and top it up if it has dropped below 30 percent. A battery left completely empty for a long time can fall into deep discharge and may no longer accept a charge."),
    ("p", "Do not store the battery in a shed or garage where the temperature can fall below freezing or rise above 30 degrees Celsius."),
    ("h2", "Battery lock and key"),
    ("p", "The battery is locked into the frame with a key. Two keys are supplied with the bike, and the key number is printed on a small tag. Please record the key number in the Northwind app, so that our stores can order a replacement if both keys are lost."),
    ("h2", "Damage and recycling"),
    ("p", "If the battery has been dropped, is swollen, smells unusual or becomes hot during normal use, stop using it straight away and contact a Northwind store. Do not try to open or repair the battery yourself."),
    ("p", "When your battery reaches the end of its life, any Northwind store will take it back for recycling free of charge, whether or not you bought it from us. Please never put a lithium-ion battery in household waste."),
]

PRESS_RELEASE_SHEFFIELD = [
    ("h1", "Northwind Cycles to Open Sheffield Assembly Plant"),
    ("p", "FOR IMMEDIATE RELEASE. York, 15 May 2025."),
    ("p", "Northwind Cycles, the York-based bicycle maker and retailer, today announced an investment of 18 million GBP in a new frame and bike assembly plant in Sheffield. The plant, at the Attercliffe Works site in the east of the city, will bring the assembly of Northwind frames back to the UK for the first time since 2012."),
    ("h2", "Jobs and production"),
    ("p", "The Sheffield plant will create 120 new jobs, including engineers, frame builders, painters and warehouse staff. It is expected to begin production in spring 2026 and will reach full capacity of 40,000 frames per year by the end of 2027. Aluminium frames for the Fellrunner and Tarn City ranges will be the first to move to Sheffield, followed by the Packhorse cargo bike."),
    ("p", "Northwind will also launch an apprenticeship programme at the plant, taking on 25 apprentices in its first year in partnership with a local further education college. Apprentices will train in welding, frame alignment and finishing over a two year course."),
    ("h2", "A cleaner way to build bikes"),
    ("p", "The building will be powered in part by a solar roof of 2.4 megawatts, which is expected to supply around 60 percent of the plant's electricity. A water-based paint line will replace the solvent paints used by the company's current overseas suppliers, and all offcuts of aluminium tubing will be collected and sent for recycling."),
    ("h2", "What the company said"),
    ("p", "Marta Ellison, chief executive of Northwind Cycles, said: \"Sheffield has built things from steel and skill for centuries, and we are proud to add bicycles to that story. Building our frames closer to our riders means shorter lead times, less freight and better jobs in the north of England.\""),
    ("p", "Owen Reyes, head of manufacturing, added: \"Our riders have asked us for years where their bikes are made. From 2026, the answer for most of our range will be a short ride from the Peak District.\""),
    ("h2", "About Northwind Cycles"),
    ("p", "Northwind Cycles was founded in York in 2009 by Marta Ellison and Owen Reyes. The company designs road, gravel, city, electric and cargo bikes, and sells them online and through five stores in York, Leeds, Manchester, Bristol and Edinburgh. It employs around 340 people."),
    ("p", "Media contact: press@northwindcycles.example."),
]

FRAME_SIZING_GUIDE = [
    ("h1", "Frame Sizing Guide"),
    ("p", "Choosing the right frame size is the most important step in buying a bike. A frame that fits lets you ride comfortably for hours, handle the bike with confidence and avoid sore knees, shoulders and back. This guide explains how Northwind sizes its frames and how to find your size at home."),
    ("h2", "Size chart by rider height"),
    ("p", "Northwind road, gravel and hybrid bikes come in five sizes. Use your height without shoes to find the starting point in the list below."),
    ("li", "Size XS suits riders from 150 to 160 cm tall."),
    ("li", "Size S suits riders from 160 to 170 cm tall."),
    ("li", "Size M suits riders from 170 to 178 cm tall."),
    ("li", "Size L suits riders from 178 to 186 cm tall."),
    ("li", "Size XL suits riders from 186 to 196 cm tall."),
    ("p", "Mountain bikes and the Sprout kids bikes use their own charts, which you can find on each product page."),
    ("h2", "Measuring your inside leg"),
    ("p", "Height alone does not tell the whole story, since two riders of the same height can have very different leg lengths. To measure your inside leg, stand barefoot with your back against a wall and hold a hardback book firmly between your legs, spine upwards. Ask a friend to measure from the top of the spine of the book to the floor."),
    ("p", "For a road or gravel bike, multiply your inside leg in centimetres by 0.67 to estimate your ideal seat tube length. For example, an inside leg of 81 cm suggests a seat tube of about 54 cm."),
    ("h2", "Checking stand-over clearance"),
    ("p", "Stand over the bike with both feet flat on the ground, just in front of the saddle. There should be a gap of 2 to 5 cm between the top tube and your body on a road bike, and at least 5 cm on a gravel or city bike."),
    ("h2", "If you are between two sizes"),
    ("p", "If your height falls between two sizes, choose the smaller frame if you want quicker handling and a more upright position, and the larger frame if you prefer stability at speed and a longer, lower position. Riders with long arms and a short inside leg usually suit the larger frame."),
    ("h2", "Free bike fit"),
    ("p", "Every Northwind store offers a free bike fit session of 45 minutes when you buy a new bike. A trained fitter will set your saddle height, saddle setback and handlebar position, and can swap the stem for a longer or shorter one at no extra cost within the first 30 days."),
    ("p", "If your new bike does not feel right after a few rides, come back to the store and we will adjust it again."),
]

BRAKE_MAINTENANCE = [
    ("h1", "Brake Maintenance"),
    ("p", "Good brakes are the most important safety feature on any bike. This guide covers the routine checks and simple maintenance jobs that keep the hydraulic disc brakes on Northwind bikes working well, and explains when to ask a mechanic for help."),
    ("h2", "Weekly checks"),
    ("p", "Squeeze each brake lever firmly before every ride. The lever should stop well before it touches the handlebar and should feel firm rather than spongy. If a lever feels soft or pulls all the way to the bar, do not ride the bike until the brake has been checked."),
    ("p", "Listen for squealing or grinding noises when you brake. A loud grinding sound usually means that the pads are worn down to the metal backing plate."),
    ("h2", "Brake pads"),
    ("p", "Replace disc brake pads when the friction material is less than 1.5 mm thick on either pad. Riders in hilly or muddy areas may need new pads every few months, while riders on dry city roads may only need them once a year."),
    ("p", "New pads must be bedded in before they reach full power. Ride at about 25 km/h and brake firmly to walking pace around 20 times, without locking the wheel. This transfers a thin layer of pad material onto the rotor and gives the brake its full strength."),
    ("h2", "Rotors"),
    ("p", "Replace a rotor when it is worn to less than 1.8 mm thick, or when it is bent so badly that it rubs on the pads. When fitting a rotor, tighten the six rotor bolts to 6 Nm in a star pattern."),
    ("p", "Keep oil and grease well away from the rotors and pads. To clean a rotor, use isopropyl alcohol and a clean, lint-free cloth. Pads that have been contaminated with oil cannot be cleaned reliably and should be replaced."),
    ("h2", "Brake fluid and bleeding"),
    ("p", "Northwind hydraulic brakes use mineral oil. Never use DOT brake fluid in a Northwind brake, because DOT fluid attacks the rubber seals inside the lever and caliper and will cause the brake to fail."),
    ("p", "Hydraulic brakes should be bled every 12 months, or sooner if the lever feels spongy. Bleeding replaces old oil and removes air bubbles from the system. It needs a special bleed kit, so most riders leave this job to a workshop."),
    ("h2", "Workshop brake service"),
    ("p", "A brake service at any Northwind store costs 39 GBP per bike and includes a full bleed of both brakes, a pad and rotor inspection, and a road test. Parts such as new pads or rotors are charged separately."),
]


def write_pdf(path: Path, blocks: list[tuple[str, str]], title: str) -> None:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(title)
    pdf.set_author(AUTHOR)
    pdf.set_creator("Sluice data/sample/make_binary_docs.py")
    pdf.set_margins(20, 20, 20)
    pdf.set_auto_page_break(True, margin=20)
    pdf.add_page()
    for kind, text in blocks:
        if kind == "h1":
            pdf.set_font("Helvetica", "B", 18)
            pdf.multi_cell(0, 9, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(4)
        elif kind == "h2":
            pdf.ln(2)
            pdf.set_font("Helvetica", "B", 13)
            pdf.multi_cell(0, 7, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        elif kind == "p":
            pdf.set_font("Helvetica", "", 11)
            pdf.multi_cell(0, 5.5, text, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
        else:
            raise ValueError(f"unsupported block kind for PDF: {kind}")
    path.write_bytes(bytes(pdf.output()))


def _fixed_zip(data: bytes) -> bytes:
    """Rewrite a zip with fixed member timestamps and order, for byte-identical output."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            member = zipfile.ZipInfo(info.filename, date_time=(2025, 6, 1, 12, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            dst.writestr(member, src.read(info.filename))
    return out.getvalue()


def write_docx(path: Path, blocks: list[tuple[str, str]], title: str) -> None:
    import docx

    document = docx.Document()
    props = document.core_properties
    props.title = title
    props.author = AUTHOR
    props.last_modified_by = AUTHOR
    props.created = FIXED_DATE.replace(tzinfo=None)
    props.modified = FIXED_DATE.replace(tzinfo=None)
    props.last_printed = FIXED_DATE.replace(tzinfo=None)
    props.revision = 1
    styles = {"h1": "Heading 1", "h2": "Heading 2", "p": "Normal", "li": "List Bullet"}
    for kind, text in blocks:
        document.add_paragraph(text, style=styles[kind])
    buf = io.BytesIO()
    document.save(buf)
    path.write_bytes(_fixed_zip(buf.getvalue()))


def main() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    write_pdf(CORPUS / "ebike-battery-care.pdf", EBIKE_BATTERY_CARE, "E-Bike Battery Care")
    write_pdf(
        CORPUS / "press-release-sheffield-plant.pdf",
        PRESS_RELEASE_SHEFFIELD,
        "Northwind Cycles to Open Sheffield Assembly Plant",
    )
    write_docx(CORPUS / "frame-sizing-guide.docx", FRAME_SIZING_GUIDE, "Frame Sizing Guide")
    write_docx(CORPUS / "brake-maintenance.docx", BRAKE_MAINTENANCE, "Brake Maintenance")
    for name in ("ebike-battery-care.pdf", "press-release-sheffield-plant.pdf", "frame-sizing-guide.docx", "brake-maintenance.docx"):
        print(CORPUS / name)


if __name__ == "__main__":
    main()
