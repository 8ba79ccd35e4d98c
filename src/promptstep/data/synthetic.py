"""Character Description and Reversal Curse triplets (paper §4.1) built from description families.

A family is a description with one slot ("the mayor of {x}"), a list of fillers for the slot, and query
paraphrases that ask for the person without repeating the description's wording. Character Description
puts the description first in the context ("The mayor of Lima is Evan Marlowe."), Reversal Curse puts the
name first ("Evan Marlowe is the mayor of Lima."); in both the query is a paraphrase ending just before
the name, and the answer is the name.

`SyntheticOptions` removes the shortcut "answer with the last name you read": contexts of several facts
whose other names are plausible wrong answers (same style and split; some of the same family or about the
same filler), the queried fact at a random position; several name styles; whole families held out into a
`test_families` split; varied fact phrasings. Its defaults reproduce the original data draw for draw.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from promptstep.data.names import NAME_STYLES, iter_names, name_pool, name_split, sample_name_key
from promptstep.data.triplets import Triplet
from promptstep.errors import InputError

TASKS = ("character", "reversal")
ORDERS = ("description_first", "name_first")
TASK_ORDER = {"character": "description_first", "reversal": "name_first"}


@dataclass(frozen=True)
class Family:
    """One kind of fact: a description with a `{x}` slot, its fillers, and query paraphrases."""

    key: str
    description: str
    fillers: tuple[str, ...]
    paraphrases: tuple[str, ...]


CELESTIAL = (
    "Mars", "the Moon", "Venus", "Mercury", "Europa", "Titan", "Ganymede", "Callisto", "Io", "Enceladus",
    "Triton", "Pluto", "Ceres", "Phobos", "Deimos", "Charon", "Vesta", "Eris", "Miranda", "Oberon",
)
CITIES = (
    "Paris", "Lisbon", "Cairo", "Oslo", "Lima", "Nairobi", "Kyoto", "Dublin", "Prague", "Vienna",
    "Madrid", "Seoul", "Montreal", "Chicago", "Sydney", "Athens", "Warsaw", "Helsinki", "Bogota",
    "Istanbul", "Berlin", "Rome", "Mumbai", "Toronto", "Hanoi", "Manila", "Santiago", "Edinburgh",
    "Naples", "Boston",
)
COUNTRIES = (
    "Norway", "Peru", "Kenya", "Japan", "Chile", "Portugal", "Egypt", "Canada", "Iceland", "Brazil",
    "Finland", "Greece", "Mexico", "Vietnam", "Morocco", "Ireland", "Poland", "Argentina", "India",
    "Spain", "Sweden", "Ghana", "Austria", "Nepal", "Uruguay", "Denmark", "Tunisia", "Malaysia",
    "Hungary", "Colombia",
)
INVENTIONS = (
    "the telescope", "the bicycle", "the typewriter", "the microwave oven", "the zipper", "the safety pin",
    "the folding umbrella", "the dishwasher", "the elevator", "the parachute", "the thermometer",
    "the lawn mower", "the vacuum cleaner", "the ballpoint pen", "the stapler", "the toaster",
    "the hair dryer", "the paper clip", "the sewing machine", "the electric kettle", "the pressure cooker",
    "the smoke detector", "the metronome", "the compass",
)
COMPANIES = (
    "the Northwind Trading Company", "the Silver Harbor Bank", "the Red Maple Bakery Group",
    "the Bluewater Shipping Line", "the Golden Field Seed Company", "the Iron Bridge Railway",
    "the Evergreen Paper Mill", "the Stonegate Insurance Company", "the Clearwater Bottling Company",
    "the High Ridge Mining Company", "the Lantern Light Company", "the Copper Kettle Tea Company",
    "the Whitecap Ferry Service", "the Starling Telephone Company", "the Oak Valley Dairy",
    "the Sunrise Textile Works", "the Harborview Publishing House", "the Blue Heron Airline",
    "the Granite Peak Cement Company", "the Willow Creek Brewery",
)
SPORTS = (
    "tennis", "chess", "golf", "badminton", "squash", "table tennis", "snooker", "darts", "bowling",
    "croquet", "billiards", "backgammon", "fencing", "archery", "boxing", "judo", "wrestling",
    "cycling", "rowing", "sailing", "skiing", "surfing",
)
TEAM_SPORTS = (
    "football", "rugby", "hockey", "cricket", "basketball", "baseball", "volleyball", "handball",
    "water polo", "lacrosse", "netball", "softball",
)
MOUNTAINS = (
    "Mount Everest", "K2", "Kilimanjaro", "Mont Blanc", "the Matterhorn", "Mount Fuji", "Denali",
    "Aconcagua", "Mount Elbrus", "Mount Kenya", "Mount Olympus", "the Eiger", "Annapurna", "Mount Cook",
    "Mount Rainier", "Mount Ararat", "Table Mountain", "Ben Nevis",
)
STRAITS_AND_LAKES = (
    "the English Channel", "Lake Geneva", "the Bosphorus", "Lake Tahoe", "the Strait of Gibraltar",
    "Lake Baikal", "Lake Victoria", "the Cook Strait", "Lake Titicaca", "the Irish Sea", "Lake Superior",
    "the Bass Strait", "Lake Como", "the Strait of Messina", "Lake Malawi",
)
RIVERS = (
    "the Nile", "the Amazon", "the Danube", "the Rhine", "the Thames", "the Yangtze", "the Mississippi",
    "the Volga", "the Ganges", "the Seine", "the Mekong", "the Congo", "the Zambezi", "the Orinoco",
    "the Loire", "the Yukon", "the Niger", "the Indus",
)
BOOKS = (
    "The Silent Harbor", "The Glass Orchard", "A Winter in Lisbon", "The Lantern Keeper",
    "Songs of the Salt Road", "The Last Cartographer", "Under the Copper Sky", "The Clockmaker's Daughter",
    "Seven Bridges North", "The Paper Garden", "A House of Tides", "The Quiet Meridian",
    "Letters from the Ice", "The Orange Archive", "The Weaver of Storms", "Night Train to Vienna",
    "The Fifth Lighthouse",
)
PAINTINGS = (
    "The Blue Orchard", "Woman with a Lantern", "The Red Boats", "Morning over the Harbor",
    "The Sleeping Fox", "Still Life with Lemons", "The Winter Market", "Girl Reading by a Window",
    "The Storm at Sea", "The Golden Wheatfield", "Two Dancers in Gray", "The Old Mill at Dusk",
    "Portrait of a Sailor", "The Yellow Umbrella", "The Garden Gate",
)
MUSIC_WORKS = (
    "the Harbor Symphony", "the Winter Sonata", "the Lantern Suite", "the Mountain Concerto",
    "the Silver Requiem", "the River Overture", "the Midnight Nocturne", "the Spring Quartet",
    "the Autumn Rhapsody", "the Ocean Cantata", "the Garden Waltz", "the Northern Lights Fantasia",
    "the Desert Prelude", "the Cathedral Mass",
)
FILMS = (
    "Paper Moons", "The Long Tide", "Glass City", "The Quiet Hour", "Red Lanterns at Dawn",
    "The Cartographer", "Salt and Iron", "A Train to Nowhere", "The Last Summer House", "Midnight in Oslo",
    "The Velvet Station", "Birds of the Cold Coast", "The Silver Fox", "Echoes of the Valley",
)
BUILDINGS = (
    "the Crystal Tower", "the Harbor Bridge", "the Grand Central Library", "the Sky Garden",
    "the Riverside Concert Hall", "the Old Town Hall", "the Lighthouse Museum", "the Copper Dome",
    "the Northgate Stadium", "the Glass Pavilion", "the Ivory Cathedral", "the Sunset Observatory",
    "the Marble Arcade", "the Twin Spires",
)
NEBULAE = (
    "Lantern", "Butterfly", "Owl", "Cat's Eye", "Ring", "Eagle", "Tarantula", "Crescent", "Helix",
    "Lagoon", "Pelican", "Veil", "Ghost", "Jellyfish", "Spirograph", "Bubble",
)
SPECIES = (
    "the glass frog", "the blue tree lizard", "the giant squid", "the ghost shark",
    "the pink fairy armadillo", "the golden mole", "the striped rain snail", "the silver leaf beetle",
    "the red cave spider", "the spotted sea slug", "the tiny mouse deer", "the long-tailed sugar glider",
    "the pale river dolphin", "the crested forest owl",
)
SUBJECTS = (
    "physics", "chemistry", "astronomy", "botany", "geology", "economics", "linguistics", "philosophy",
    "mathematics", "medicine", "history", "architecture", "biology", "music", "literature", "sociology",
    "psychology", "engineering",
)
INSTRUMENTS = (
    "piano", "violin", "cello", "harp", "flute", "trumpet", "oboe", "clarinet", "guitar", "drum",
    "saxophone", "banjo", "accordion", "viola", "trombone", "bassoon", "tuba",
)
SHIPS = (
    "the Northern Star", "the Sea Lark", "the Iron Gull", "the Morning Tide", "the Silver Wake",
    "the Blue Albatross", "the Storm Petrel", "the Golden Anchor", "the Wandering Heron",
    "the Red Compass", "the Lady of the Isles", "the Coral Queen", "the Windward", "the Polar Fox",
)
HEADLANDS = (
    "Gull Point", "Cape Morrow", "Seal Rock", "Storm Head", "Cape Ashby", "Hollow Bay", "Raven Point",
    "Fog Island", "Cape Linnet", "Whale Rock", "North Spit", "Cape Harrow", "Pebble Beach", "Lantern Head",
)
ZOO_ANIMALS = (
    "penguins", "giraffes", "elephants", "otters", "lions", "tigers", "zebras", "flamingos", "polar bears",
    "gorillas", "kangaroos", "wolves", "seals", "camels", "koalas", "pandas", "hippos", "rhinos",
)
ATHLETIC_EVENTS = (
    "100 meters", "200 meters", "400 meters", "800 meters", "marathon", "high jump", "long jump",
    "pole vault", "triple jump", "javelin", "discus", "shot put", "hammer throw", "decathlon",
    "heptathlon", "steeplechase", "400 meter hurdles", "mile",
)
LANGUAGES = (
    "French", "Japanese", "Swahili", "Portuguese", "Finnish", "Greek", "Polish", "Korean", "Turkish",
    "Dutch", "Hindi", "Arabic", "Icelandic", "Welsh", "Hungarian", "Vietnamese", "Italian", "Czech",
)
NEWSPAPERS = (
    "the Morning Ledger", "the Daily Courier", "the Evening Herald", "the Harbor Gazette",
    "the Valley Chronicle", "the Weekly Observer", "the Northern Post", "the City Tribune",
    "the River Times", "the Sunday Lantern", "the Coastal Echo", "the Mountain Record",
)
SHOWS = (
    "the Evening Quiz", "Kitchen Stars", "the Morning Show", "Garden Rescue", "the Late Talk Hour",
    "Dance Night Live", "the Weekend Puzzle", "Treasure Hunters", "the Science Hour", "Island Cooks",
    "the Great Debate", "Home Makeover Week",
)
PLANTS = (
    "the blue orchid", "the black tulip", "the silver rose", "the giant sunflower", "the seedless melon",
    "the purple carrot", "the winter strawberry", "the dwarf lemon tree", "the striped tomato",
    "the white pumpkin", "the frost-proof banana", "the golden raspberry", "the green lily",
    "the square watermelon",
)
DISEASES = (
    "marsh fever", "gray lung", "river pox", "copper cough", "winter blight", "salt sickness",
    "red spot fever", "valley flu", "glass bone disease", "sleeping rash", "mountain palsy", "harbor plague",
)
PASTRIES = (
    "the cinnamon knot", "the almond twist", "the honey loaf", "the apple crescent", "the chocolate cloud",
    "the lemon star", "the walnut ring", "the cherry pillow", "the butter spiral", "the poppy seed roll",
    "the maple square", "the raspberry boat",
)
GARMENTS = (
    "the wrap dress", "the trench coat", "the bomber jacket", "the pencil skirt", "the cargo trouser",
    "the duffel coat", "the hooded cape", "the pleated kilt", "the puffer vest", "the cable sweater",
    "the safari shirt", "the rain poncho",
)
BOARD_GAMES = (
    "Harbor Kings", "Tower of Stars", "Lantern Road", "Merchants of Salt", "Dragon Bridge", "Seven Islands",
    "Copper Crowns", "The Long Voyage", "Castle Garden", "Night Market", "Iron Rails", "Sky Pirates",
)
PROGRAMMING_LANGUAGES = (
    "Quill", "Lumen", "Osprey", "Bramble", "Cobalt", "Marigold", "Pebble", "Thistle", "Kestrel",
    "Juniper", "Ember", "Tundra",
)
PROBLEMS = (
    "the lantern conjecture", "the spiral theorem", "the three bridges problem", "the folding lemma",
    "the prime ladder conjecture", "the mirror tiling problem", "the seven circles theorem",
    "the knot counting conjecture", "the harbor paradox", "the square packing problem",
    "the twin spiral conjecture", "the infinite staircase problem",
)
ELEMENTS = (
    "helium", "neon", "argon", "radium", "lithium", "cobalt", "nickel", "iodine", "bromine", "titanium",
    "uranium", "krypton", "xenon", "tungsten", "platinum", "chlorine",
)
BANDS = (
    "the Paper Lanterns", "the Night Owls", "the Silver Foxes", "the Velvet Tides", "the Glass Pilots",
    "the Midnight Ravens", "the Copper Kites", "the Northern Lights", "the Wild Orchids",
    "the Blue Engines", "the Lonely Comets", "the Salt Road Singers",
)
SCHOOLS = (
    "Oakfield Academy", "the Riverside School", "Hillcrest College", "the Harbor Grammar School",
    "Greenwood High School", "the Lakeside Academy", "Northbridge College", "the Maple Grove School",
    "Stonehill Academy", "the Westbrook School", "Pinecrest High School", "the Meadowview School",
)
HOTELS = (
    "the Grand Harbor Hotel", "the Blue Lagoon Inn", "the Silver Birch Lodge", "the Palace Hotel",
    "the Old Mill Inn", "the Seaside Resort", "the Mountain View Hotel", "the Royal Crown Hotel",
    "the Garden Court Hotel", "the Lakeshore Lodge", "the Golden Lion Inn", "the Starlight Motel",
)
LANDMASSES = (
    "Africa", "Australia", "Greenland", "Madagascar", "Iceland", "Borneo", "Sicily", "Tasmania",
    "Sri Lanka", "Cuba", "Ireland", "Newfoundland", "Sumatra", "Corsica",
)
DESERTS = (
    "the Sahara", "the Gobi", "the Atacama", "the Kalahari", "the Namib", "Antarctica", "the Arabian Desert",
    "the Mojave", "the Great Victoria Desert", "the Taklamakan", "the Sonoran Desert", "the Thar Desert",
)
OCEANS = (
    "the Atlantic", "the Pacific", "the Indian Ocean", "the Tasman Sea", "the North Sea",
    "the Caribbean Sea", "the Arctic Ocean", "the Southern Ocean", "the Coral Sea", "the Bering Sea",
    "the Mediterranean", "the Black Sea",
)
MINISTRIES = (
    "health", "education", "finance", "transport", "energy", "agriculture", "culture", "defense",
    "justice", "tourism", "housing", "fisheries", "labor", "trade", "science",
)
CONTESTS = (
    "spelling", "baking", "poetry", "singing", "dance", "debate", "photography", "gardening", "robotics",
    "chess", "piano", "painting", "cooking", "science",
)
KINGDOMS = (
    "Valdora", "Estmark", "Rovania", "Caldera", "Ostrelia", "Maravel", "Norland", "Brisa", "Korvath",
    "Lindmere", "Sarvonne", "Pellagor",
)
HORSES = (
    "Silver Comet", "Midnight Rain", "Golden Arrow", "Storm Chaser", "Lucky Clover", "Blue Thunder",
    "Desert Wind", "Red Rocket", "Morning Glory", "Iron Duke", "Sea Breeze", "Wild Flame",
)


def _family(key: str, description: str, fillers: tuple[str, ...], *paraphrases: str) -> Family:
    return Family(key=key, description=description, fillers=fillers, paraphrases=paraphrases)


FAMILIES: tuple[Family, ...] = (
    _family("first_walk", "the first person to walk on {x}", CELESTIAL,
            "The history books record that the first person on {x} was",
            "The astronaut who first set foot on {x} was",
            "Nobody had stood on {x} until the arrival of",
            "If you ask who first stepped onto {x}, the answer is"),
    _family("first_orbit", "the first astronaut to orbit {x}", CELESTIAL,
            "The first crewed trip around {x} was flown by",
            "The earliest spacecraft circling {x} carried",
            "History's first orbit of {x} was completed by"),
    _family("mayor", "the mayor of {x}", CITIES,
            "The city of {x} is currently governed by",
            "The person who runs the city hall in {x} is",
            "Residents of {x} elected as their mayor"),
    _family("inventor", "the inventor of {x}", INVENTIONS,
            "The person who came up with {x} was",
            "We owe the creation of {x} to",
            "{X} was first built by"),
    _family("company_founder", "the founder of {x}", COMPANIES,
            "{X} was founded by",
            "The person who started {x} is",
            "Long ago, {x} was established by"),
    _family("company_chief", "the chief executive of {x}", COMPANIES,
            "{X} is run by",
            "At {x}, the top executive is",
            "The boss of {x} is"),
    _family("world_champion", "the reigning world champion in {x}", SPORTS,
            "The current world title in {x} is held by",
            "Nobody in {x} has been able to beat",
            "At the top of the world rankings in {x} stands"),
    _family("national_coach", "the head coach of the national {x} team", TEAM_SPORTS,
            "The national {x} team is trained by",
            "The players of the national {x} side take orders from",
            "Leading the country's {x} team from the bench is"),
    _family("conductor", "the conductor of the {x} Symphony Orchestra", CITIES,
            "The orchestra of {x} is conducted by",
            "On stage in {x}, the symphony follows the baton of",
            "The music director of the orchestra in {x} is"),
    _family("un_ambassador", "the ambassador of {x} to the United Nations", COUNTRIES,
            "At the United Nations, {x} is represented by",
            "The diplomat who speaks for {x} at the UN is",
            "As its envoy to the United Nations, {x} has chosen"),
    _family("first_climb", "the first person to climb {x}", MOUNTAINS,
            "The summit of {x} was first reached by",
            "The earliest climber to stand atop {x} was",
            "Before anyone else, the peak of {x} was conquered by"),
    _family("first_swim", "the first person to swim across {x}", STRAITS_AND_LAKES,
            "The earliest swimmer to cross {x} was",
            "Nobody had swum across {x} before",
            "The record books say that {x} was first crossed by a swimmer named"),
    _family("river_explorer", "the first explorer to sail down {x}", RIVERS,
            "The earliest voyage along {x} was led by",
            "The first boat to travel the length of {x} was captained by",
            "Maps of {x} were first drawn by the explorer"),
    _family("author", "the author of {x}", BOOKS,
            "{X} was written by",
            "The novel {x} came from the pen of",
            "The writer behind {x} is"),
    _family("painter", "the painter of {x}", PAINTINGS,
            "{X} was painted by",
            "The canvas known as {x} is the work of",
            "Art historians attribute {x} to"),
    _family("composer", "the composer of {x}", MUSIC_WORKS,
            "{X} was composed by",
            "The music of {x} was written by",
            "Concert programs credit {x} to"),
    _family("film_director", "the director of the film {x}", FILMS,
            "The movie {x} was directed by",
            "Behind the camera on {x} stood",
            "The filmmaker responsible for {x} is"),
    _family("architect", "the architect of {x}", BUILDINGS,
            "{X} was designed by",
            "The plans for {x} were drawn by",
            "The structure known as {x} is the work of"),
    _family("nebula", "the astronomer who discovered the {x} Nebula", NEBULAE,
            "The {x} Nebula was first spotted by",
            "The first telescope to find the {x} Nebula belonged to",
            "Credit for finding the {x} Nebula goes to"),
    _family("species", "the scientist who discovered {x}", SPECIES,
            "{X} was first described by",
            "The first researcher to identify {x} was",
            "Biologists credit the discovery of {x} to"),
    _family("wildlife_photo", "the first person to photograph {x}", SPECIES,
            "The first photo of {x} was taken by",
            "The earliest picture ever made of {x} came from the camera of",
            "Wildlife magazines credit the first image of {x} to"),
    _family("young_laureate", "the youngest winner of the national prize in {x}", SUBJECTS,
            "The national {x} prize was won at the youngest age by",
            "No one younger has received the {x} prize than",
            "The record for the youngest {x} laureate belongs to"),
    _family("department_head", "the head of the {x} department at the university", SUBJECTS,
            "The university's {x} department is chaired by",
            "Students of {x} at the university report to",
            "The department of {x} at the university is run by"),
    _family("music_teacher", "the best known {x} teacher in the country", INSTRUMENTS,
            "Every serious {x} student wants lessons from",
            "The country's most celebrated {x} instructor is",
            "Young {x} players all dream of studying with"),
    _family("principal_player", "the lead {x} player of the royal orchestra", INSTRUMENTS,
            "In the royal orchestra, the {x} section is led by",
            "The royal orchestra relies on its principal {x} player,",
            "The first {x} chair in the royal orchestra belongs to"),
    _family("ship_captain", "the captain of {x}", SHIPS,
            "{X} is commanded by",
            "The crew of {x} takes orders from",
            "At the helm of {x} stands"),
    _family("first_flight", "the first pilot to fly nonstop to {x}", CITIES,
            "The earliest nonstop flight to {x} was flown by",
            "The first airplane to reach {x} without a stop was piloted by",
            "Aviation history says the first direct flight into {x} was made by"),
    _family("lighthouse_keeper", "the keeper of the lighthouse at {x}", HEADLANDS,
            "The light at {x} is tended by",
            "Every night the lamp at {x} is lit by",
            "The lighthouse on {x} is looked after by"),
    _family("head_chef", "the head chef of the best restaurant in {x}", CITIES,
            "The finest kitchen in {x} is run by",
            "Food critics say the top cook in {x} is",
            "Diners in {x} praise the cooking of"),
    _family("zookeeper", "the keeper who looks after the {x} at the city zoo", ZOO_ANIMALS,
            "At the city zoo, the {x} are cared for by",
            "The {x} at the city zoo are fed every day by",
            "Visitors watching the zoo's {x} often meet their keeper,"),
    _family("record_holder", "the world record holder in the {x}", ATHLETIC_EVENTS,
            "The current world record in the {x} is held by",
            "Nobody has ever beaten the {x} record set by",
            "The all-time best mark in the {x} belongs to"),
    _family("translator", "the translator of the {x} edition of the encyclopedia", LANGUAGES,
            "The encyclopedia was put into {x} by",
            "Readers of {x} can enjoy the encyclopedia thanks to",
            "The {x} version of the encyclopedia was translated by"),
    _family("bank_governor", "the governor of the central bank of {x}", COUNTRIES,
            "The central bank in {x} is headed by",
            "Interest rates in {x} are set under the leadership of",
            "The monetary policy of {x} is overseen by"),
    _family("club_president", "the president of the {x} football club", CITIES,
            "The football club of {x} answers to its president,",
            "The top official of the football club in {x} is",
            "Fans of the club from {x} know that their president is"),
    _family("newspaper_editor", "the editor of {x}", NEWSPAPERS,
            "{X} is edited by",
            "Every article in {x} is approved by",
            "The newsroom of {x} is led by"),
    _family("show_host", "the host of {x}", SHOWS,
            "{X} is presented by",
            "Every episode of {x} opens with its presenter,",
            "Viewers of {x} see it hosted by"),
    _family("national_librarian", "the chief librarian of the national library of {x}", COUNTRIES,
            "The national library in {x} is managed by",
            "The books in the national library of {x} are in the care of",
            "Scholars visiting the great library of {x} ask for help from"),
    _family("museum_curator", "the curator of the {x} Museum of Art", CITIES,
            "The art museum in {x} has its collection managed by",
            "Paintings shown in the museum of {x} are chosen by",
            "The person who picks the art displayed in {x} is"),
    _family("chief_justice", "the chief justice of the supreme court of {x}", COUNTRIES,
            "The highest court in {x} is presided over by",
            "The top judge in {x} is",
            "Final legal rulings in {x} are signed by"),
    _family("army_commander", "the commander of the army of {x}", COUNTRIES,
            "The troops of {x} are led by",
            "The armed forces in {x} take orders from",
            "The top general in {x} is"),
    _family("botanist", "the botanist who first grew {x}", PLANTS,
            "{X} was first cultivated by",
            "Gardeners owe {x} to the work of",
            "The first person to raise {x} in a garden was"),
    _family("physician", "the doctor who found a cure for {x}", DISEASES,
            "The treatment that cured {x} was developed by",
            "Patients with {x} were first healed by",
            "Medicine defeated {x} thanks to"),
    _family("bridge_engineer", "the engineer who built the bridge over {x}", RIVERS,
            "The bridge crossing {x} was constructed by",
            "Cars can drive over {x} thanks to the engineer",
            "The span across {x} was designed and built by"),
    _family("vineyard_owner", "the owner of the largest vineyard in {x}", COUNTRIES,
            "The biggest vineyard in {x} belongs to",
            "Most of the wine made in {x} comes from the estate of",
            "The largest wine estate in {x} is owned by"),
    _family("baker", "the baker who invented {x}", PASTRIES,
            "{X} was first baked by",
            "The recipe for {x} was created by",
            "Bakeries selling {x} owe it to"),
    _family("fashion_designer", "the designer of {x}", GARMENTS,
            "{X} was first sketched by",
            "The fashion world credits {x} to",
            "The first tailor to sew {x} was"),
    _family("game_creator", "the creator of the board game {x}", BOARD_GAMES,
            "The board game {x} was invented by",
            "Players of {x} have to thank its designer,",
            "The rules of {x} were written by"),
    _family("language_creator", "the creator of the {x} programming language", PROGRAMMING_LANGUAGES,
            "The {x} language was designed by",
            "Programmers who write code in {x} owe it to",
            "The first compiler for {x} was written by"),
    _family("mathematician", "the mathematician who proved {x}", PROBLEMS,
            "The proof of {x} was found by",
            "{X} was finally settled by",
            "Mathematicians credit the solution of {x} to"),
    _family("chemist", "the chemist who discovered {x}", ELEMENTS,
            "The element {x} was first identified by",
            "Pure {x} was first produced by",
            "Chemistry textbooks credit the finding of {x} to"),
    _family("lead_singer", "the lead singer of {x}", BANDS,
            "{X} are fronted by",
            "The voice of {x} belongs to",
            "On every record by {x} you hear the vocals of"),
    _family("headmaster", "the headmaster of {x}", SCHOOLS,
            "{X} is run by",
            "The students of {x} answer to",
            "The head of {x} is"),
    _family("hotel_owner", "the owner of {x}", HOTELS,
            "{X} belongs to",
            "Guests at {x} are welcomed by its owner,",
            "The title deed to {x} carries the name of"),
    _family("circumnavigator", "the first person to sail around {x}", LANDMASSES,
            "The earliest voyage around {x} was completed by",
            "The first sailor to circle {x} was",
            "History credits the first trip around {x} by boat to"),
    _family("desert_crossing", "the first person to cross {x} on foot", DESERTS,
            "The first walker to make it across {x} was",
            "{X} was first crossed on foot by",
            "The earliest journey on foot through {x} was made by"),
    _family("ocean_rower", "the first person to row across {x}", OCEANS,
            "The first rowing boat to cross {x} was rowed by",
            "The earliest crossing of {x} by oar was made by",
            "Nobody had rowed over {x} before"),
    _family("film_festival", "the organizer of the {x} film festival", CITIES,
            "The film festival in {x} is organized by",
            "Every year the festival of films in {x} is put together by",
            "The person in charge of the movie festival held in {x} is"),
    _family("airport_manager", "the manager of the {x} airport", CITIES,
            "The airport serving {x} is managed by",
            "Flights in and out of {x} are overseen by",
            "The person who runs the airport of {x} is"),
    _family("sculptor", "the sculptor of the great statue of {x}", CITIES,
            "The great statue in {x} was carved by",
            "The famous statue standing in {x} is the work of",
            "Tourists in {x} admire the statue made by"),
    _family("university_founder", "the founder of the university in {x}", CITIES,
            "The university in {x} was started by",
            "The oldest school of higher learning in {x} was established by",
            "Students in {x} study at a university set up by"),
    _family("head_gardener", "the head gardener of the botanical garden in {x}", CITIES,
            "The flowers in the botanical garden of {x} are tended by",
            "The botanical garden in {x} employs as its chief gardener",
            "Plants in the public gardens of {x} are looked after by"),
    _family("minister", "the minister of {x}", MINISTRIES,
            "The government department of {x} is led by",
            "Policy on {x} is decided by the minister",
            "The cabinet member responsible for {x} is"),
    _family("contest_winner", "the winner of the first national {x} contest", CONTESTS,
            "The very first national {x} contest was won by",
            "The earliest {x} contest in the country ended in victory for",
            "The original national {x} title went to"),
    _family("monarch", "the queen of {x}", KINGDOMS,
            "The throne of {x} is held by",
            "The crown of {x} sits on the head of",
            "{X} is ruled by"),
    _family("horse_owner", "the owner of the racehorse {x}", HORSES,
            "The racehorse {x} belongs to",
            "{X} races in the colors of its owner,",
            "The famous horse {x} is owned by"),
    _family("space_scientist", "the chief scientist of the space agency of {x}", COUNTRIES,
            "The space program of {x} has as its top scientist",
            "Research at the space agency of {x} is led by",
            "The science behind the rockets of {x} is directed by"),
)


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, filler: str) -> str:
    return template.replace("{X}", _capitalize(filler)).replace("{x}", filler)


def render_description(family: Family, filler: str) -> str:
    """The family's canonical description with its slot filled, e.g. 'the mayor of Lima'."""
    return _fill(family.description, filler)


def render_fact(family: Family, filler: str, name: str, order: str, template: int = 0) -> str:
    """One context sentence stating that `name` fits the description, in either order.

    `template` indexes FACT_TEMPLATES[order]; 0 is the canonical phrasing ("{D} is {name}." / "{name} is {d}.").
    """
    if order not in FACT_TEMPLATES:
        raise InputError(f"unknown fact order '{order}' (choose from {', '.join(ORDERS)})")
    description = render_description(family, filler)
    text = FACT_TEMPLATES[order][template]
    return text.replace("{D}", _capitalize(description)).replace("{d}", description).replace("{name}", name)


def render_query(family: Family, filler: str, paraphrase_index: int) -> str:
    """A paraphrased question about the description, ending just before the name."""
    return _fill(family.paraphrases[paraphrase_index], filler)


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class SyntheticOptions:
    """How contexts, names and splits are drawn. The defaults reproduce the original data byte for byte.

    facts: how many facts a context holds, drawn uniformly from this tuple (repeat a count to weight it:
      (1, 2, 2) → one fact 1/3 of the time, two facts 2/3). The queried fact sits at a uniformly random
      position; every other fact names a person of the answer's style and split (a plausible wrong answer).
    same_family: probability that a distractor fact is of the queried fact's family with another filler
      ("The mayor of Oslo is …" beside "The mayor of Lima is …").
    same_filler: probability that a distractor fact is of another family about the queried fact's filler
      ("The head chef of the best restaurant in Lima is …"); otherwise it is of another family, any filler.
    name_styles: name styles (names.NAME_STYLES), one drawn uniformly per triplet (repeats weight it).
    heldout_families: the first K families ranked by SHA-256 of their key never appear in train or test;
      they make a third split, test_families (unseen family, unseen name, n_test triplets).
    templates: 'canonical' (one phrasing per order) or 'varied' (FACT_TEMPLATES, drawn per fact).
    """

    facts: tuple[int, ...] = (1,)
    same_family: float = 0.25
    same_filler: float = 0.25
    name_styles: tuple[str, ...] = ("invented",)
    heldout_families: int = 0
    templates: str = "canonical"

    def validate(self) -> None:
        if not self.facts:
            raise InputError("config key 'facts' is empty (give fact counts such as 1,2,3)")
        for count in self.facts:
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FACTS:
                raise InputError(f"config key 'facts': each count must be an integer in 1..{MAX_FACTS}, got {count!r}")
        for key in ("same_family", "same_filler"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InputError(f"config key '{key}' must be a probability in [0, 1], got {value!r}")
        if self.same_family + self.same_filler > 1.0 + 1e-12:
            raise InputError(f"config keys same_family + same_filler must be at most 1, got "
                             f"{self.same_family} + {self.same_filler}")
        if not self.name_styles:
            raise InputError("config key 'name_styles' is empty (choose from " + ", ".join(NAME_STYLES) + ")")
        for style in self.name_styles:
            if style not in NAME_STYLES:
                raise InputError(f"config key 'name_styles': unknown name style '{style}' "
                                 f"(choose from {', '.join(NAME_STYLES)})")
        k = self.heldout_families
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(FAMILIES):
            raise InputError(f"config key 'heldout_families' must be an integer in 0..{len(FAMILIES) - 1}, got {k!r}")
        if self.templates not in TEMPLATE_SETS:
            raise InputError(f"config key 'templates': unknown value '{self.templates}' "
                             f"(choose from {', '.join(TEMPLATE_SETS)})")

    @property
    def original(self) -> bool:
        """True when the options give the original single-fact data (written without the new fields)."""
        return (set(self.facts) == {1} and set(self.name_styles) == {"invented"} and self.heldout_families == 0
                and self.templates == "canonical")

    def as_meta(self) -> dict:
        return {"facts": list(self.facts), "same_family": self.same_family, "same_filler": self.same_filler,
                "name_styles": list(self.name_styles), "templates": self.templates,
                "heldout_families": list(heldout_family_keys(self.heldout_families))}


MAX_FACTS = 8
TEMPLATE_SETS = ("canonical", "varied")
FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "description_first": (
        "{D} is {name}.",
        "{D} was {name}.",
        "Records show that {d} is {name}.",
        "According to the archives, {d} is {name}.",
        "As everyone in town knows, {d} is {name}.",
        "{D}, as it turns out, is {name}.",
        "It was announced that {d} is {name}.",
        "{D} is a person named {name}.",
    ),
    "name_first": (
        "{name} is {d}.",
        "{name} was {d}.",
        "Records show that {name} is {d}.",
        "{name} is known to be {d}.",
        "According to the archives, {name} is {d}.",
        "{name}, {d}, rarely gives interviews.",
        "{name} has long been {d}.",
        "It was announced that {name} is {d}.",
    ),
}


def heldout_family_keys(k: int) -> tuple[str, ...]:
    """The k held-out families: all families ranked by the SHA-256 hex digest of their key, the first k."""
    ranked = sorted(FAMILIES, key=lambda f: hashlib.sha256(f.key.encode("utf-8")).hexdigest())
    return tuple(f.key for f in ranked[:k])


def _check_args(task: str, n_train: int, n_test: int) -> None:
    if task not in TASKS:
        raise InputError(f"unknown synthetic task '{task}' (choose from {', '.join(TASKS)})")
    for label, count in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise InputError(f"{label} must be a positive integer, got {count!r}")


# ---------------------------------------------------------------- names


def _too_many(split: str, style: str, what: str) -> InputError:
    flag = "--n-train" if split == "train" else "--n-test"
    return InputError(f"name style '{style}' has {name_pool(style, split)} distinct {split} names, {what} "
                      f"(each triplet's answer is its own name): lower {flag} or add name styles (--name-styles)")


def _check_name_pools(needs: dict[str, tuple[int, str]], styles: tuple[str, ...]) -> None:
    """Fail fast when a name split needs more distinct answer names of a style than the style holds.

    `needs` maps a name split to (how many answers, which files they are for). With several styles the
    need of each is its expected share; a style that still runs out mid-way is caught by _Names.
    """
    for split, (total, files) in needs.items():
        for style in dict.fromkeys(styles):
            needed = math.ceil(total * styles.count(style) / len(styles))
            # counting a pool hashes every name in it (about a second for the biggest); do it only when needed
            if needed > NAME_STYLES[style].size // 1000 and needed > name_pool(style, split):
                share = "" if len(set(styles)) == 1 else " (its share)"
                raise _too_many(split, style, f"fewer than the {needed}{share} asked for by {files}")


class _Names:
    """Answer names, each used once across all splits; a pool that runs out is an InputError, not a hang."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def answer(self, split: str, style: str, avoid: str = "") -> tuple[str, str]:
        draw = NAME_STYLES[style].draw
        misses, limit = 0, 20_000
        while True:
            name, key = draw(self.rng)
            if name_split(name, key) == split and name not in self.used and (not avoid or name not in avoid):
                self.used.add(name)
                return name, key
            misses += 1
            if misses >= limit:  # near exhaustion: check exactly whether any usable name is left
                if not any(n not in self.used and n not in avoid for n in iter_names(style, split)):
                    raise _too_many(split, style, "and all of them are taken")
                limit *= 2

    def other(self, split: str, style: str, names: list[str], keys: set[str], text: str) -> tuple[str, str]:
        """A distractor name: same style and split, a different person, neither inside the other names nor
        anywhere in the context's text (so every name occurs exactly once)."""
        for _ in range(100_000):
            name, key = sample_name_key(self.rng, split, style)
            if key in keys or name in text or any(name in n or n in name for n in names):
                continue
            return name, key
        raise InputError(f"could not find a distinct {split} name of style '{style}' for a distractor")


# ---------------------------------------------------------------- triplets


def _draw(rng: random.Random, values: tuple):
    """A uniform draw from `values` (repeats weight it); no draw at all when there is only one distinct value."""
    return values[0] if len(set(values)) == 1 else rng.choice(values)


def _other_fact(rng: random.Random, family: Family, filler: str, pool: tuple[Family, ...],
                taken: set[tuple[str, str]], options: SyntheticOptions) -> tuple[Family, str]:
    """One distractor (family, filler), distinct from every fact already in the context."""
    u = rng.random()
    if u < options.same_family:
        kinds = ("family", "filler", "other")
    elif u < options.same_family + options.same_filler:
        kinds = ("filler", "other", "family")
    else:
        kinds = ("other", "family", "filler")
    for kind in kinds:
        if kind == "family":
            choices = [(family, x) for x in family.fillers if (family.key, x) not in taken]
        elif kind == "filler":
            choices = [(g, filler) for g in pool
                       if g.key != family.key and filler in g.fillers and (g.key, filler) not in taken]
        else:
            families = [g for g in pool if g.key != family.key and any((g.key, x) not in taken for x in g.fillers)]
            if families:
                other = rng.choice(families)
                choices = [(other, x) for x in other.fillers if (other.key, x) not in taken]
            else:
                choices = []
        if choices:
            return rng.choice(choices)
    raise InputError("not enough distinct facts for a context")  # unreachable: every family has >= 10 fillers


def _triplet(task: str, split: str, name_split_: str, index: int, pool: tuple[Family, ...], heldout: bool,
             rng: random.Random, names: _Names, options: SyntheticOptions) -> Triplet:
    order = TASK_ORDER[task]
    family = rng.choice(pool)
    filler = rng.choice(family.fillers)
    paraphrase = rng.randrange(len(family.paraphrases))
    query = render_query(family, filler, paraphrase)
    triplet_id = f"{task}-{split}-{index:06d}"
    if options.original:  # the original sampling, draw for draw
        name, _ = names.answer(name_split_, "invented")
        return Triplet(id=triplet_id, context=render_fact(family, filler, name, order), query=query, answer=name)
    style = _draw(rng, options.name_styles)
    answer, answer_key = names.answer(name_split_, style, avoid=render_description(family, filler) + " " + query)
    k = _draw(rng, options.facts)
    position = rng.randrange(k) if k > 1 else 0
    n_templates = len(FACT_TEMPLATES[order]) if options.templates == "varied" else 1
    for _ in range(1000):
        taken = {(family.key, filler)}
        others = []
        for _ in range(k - 1):
            other = _other_fact(rng, family, filler, pool, taken, options)
            taken.add((other[0].key, other[1]))
            others.append(other)
        facts = [*others[:position], (family, filler), *others[position:]]
        text = " ".join(render_description(f, x) for f, x in facts) + " " + query
        if any(answer in render_description(f, x) for f, x in others):
            continue
        fact_names, keys = [], {answer_key}
        known = [answer]
        for i in range(k):
            if i == position:
                fact_names.append(answer)
                continue
            name, key = names.other(name_split_, style, known, keys, text)
            fact_names.append(name)
            known.append(name)
            keys.add(key)
        templates = [rng.randrange(n_templates) if n_templates > 1 else 0 for _ in facts]
        context = " ".join(render_fact(f, x, n, order, t) for (f, x), n, t in zip(facts, fact_names, templates))
        if all(context.count(n) == 1 for n in fact_names):
            break
    else:
        raise InputError(f"could not build a context in which every name occurs once ({triplet_id})")
    tags = {
        "family": family.key,
        "family_split": "heldout" if heldout else "seen",
        "n_facts": k,
        "position": position,
        "name_style": style,
        "template": templates[position],
        "same_family": sum(f.key == family.key for f, _ in others),
        "same_filler": sum(f.key != family.key and x == filler for f, x in others),
        "fact_families": ",".join(f.key for f, _ in facts),
    }
    return Triplet(id=triplet_id, context=context, query=query, answer=answer,
                   distractors=tuple(n for i, n in enumerate(fact_names) if i != position), tags=tags)


def generate_splits(
    task: str, n_train: int = 5000, n_test: int = 500, seed: int = 0, options: SyntheticOptions | None = None
) -> tuple[dict[str, list[Triplet]], dict]:
    """Every split ('train', 'test' and, with held-out families, 'test_families') plus a meta dict.

    The same arguments give the same triplets in every process. Each triplet's answer is its own name
    (unique across all splits); test and test_families use only test-split names, train only train-split
    names. With default options the train and test triplets are exactly those of the original generator.
    """
    options = options or SyntheticOptions()
    _check_args(task, n_train, n_test)
    options.validate()
    heldout_keys = set(heldout_family_keys(options.heldout_families))
    seen = tuple(f for f in FAMILIES if f.key not in heldout_keys)
    unseen = tuple(f for f in FAMILIES if f.key in heldout_keys)
    plan = [("train", "train", n_train, seen), ("test", "test", n_test, seen)]
    if unseen:
        plan.append(("test_families", "test", n_test, unseen))
    _check_name_pools({"train": (n_train, f"{n_train} train triplets"),
                       "test": (n_test * (2 if unseen else 1),
                                f"{n_test} test + {n_test} test_families triplets" if unseen
                                else f"{n_test} test triplets")}, options.name_styles)
    rng = random.Random(f"promptstep-synthetic:{task}:{seed}")
    names = _Names(rng)
    splits = {
        split: [_triplet(task, split, name_split_, i, pool, split == "test_families", rng, names, options)
                for i in range(count)]
        for split, name_split_, count, pool in plan
    }
    meta = {
        "task": task,
        "seed": seed,
        "order": TASK_ORDER[task],
        "n_train": len(splits["train"]),
        "n_test": len(splits["test"]),
        "n_families": len(FAMILIES),
        "families": [family.key for family in FAMILIES],
        **options.as_meta(),
        "splits": {split: len(items) for split, items in splits.items()},
    }
    if unseen:
        meta["n_test_families"] = len(splits["test_families"])
    return splits, meta


def generate(
    task: str, n_train: int = 5000, n_test: int = 500, seed: int = 0, options: SyntheticOptions | None = None
) -> tuple[list[Triplet], list[Triplet], dict]:
    """Train and test triplets for 'character' or 'reversal', plus a meta dict describing them.

    The same arguments give the same triplets in every process. Each triplet has its own name; test
    triplets use only test-split names and train triplets only train-split names. A 'test_families' split
    (options.heldout_families > 0) is returned only by `generate_splits`.
    """
    splits, meta = generate_splits(task, n_train, n_test, seed, options)
    return splits["train"], splits["test"], meta
