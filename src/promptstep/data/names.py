"""Person names for the synthetic tasks, in several styles, with a fixed hash rule splitting train from test.

A style draws a (name, key) pair: `name` is what the text says ("Dr. Ana Osei"), `key` the person's plain
given name and surname ("Ana Osei"). A name belongs to the test split iff both `is_test_key(name)` and
`is_test_key(key)` hold, to the train split iff neither does (pairs where they disagree are never used).
So a test name is never a train name in any style, and the plain name inside a titled or initialled test
name is itself a test name. For `invented`, `common` and `hyphenated` the key is the name, and the rule is
the original one: SHA-256(name) mod 10 = 0 → test.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache

from promptstep.errors import InputError

FIRST_STARTS = (
    "Ab", "Al", "Ar", "Bel", "Bran", "Bren", "Cal", "Cas", "Cor", "Dar", "Del", "Ed", "El", "Em",
    "Ev", "Fen", "Gar", "Gil", "Hal", "Is", "Jas", "Jor", "Kel", "Lan", "Lor", "Mal", "Mar", "Mel",
    "Nor", "Ol", "Per", "Quin", "Ros", "Sel", "Tam", "Tor", "Val", "Wil", "Yor", "Zan",
)
FIRST_ENDS = (
    "a", "an", "en", "ia", "ie", "in", "is", "o", "on", "ora",
    "el", "ette", "ius", "yn", "ric", "ine", "ey", "ara", "ian", "us",
)
LAST_STARTS = (
    "Ar", "Ash", "Bel", "Black", "Brad", "Brook", "Cald", "Cart", "Cor", "Cross", "Dal", "Dun",
    "East", "Fair", "Finch", "Gold", "Grey", "Har", "Hart", "Hazel", "Holl", "King", "Lang", "Lock",
    "Marl", "Mill", "Moor", "Mor", "North", "Oak", "Pem", "Red", "Ridge", "Rook", "Sand", "Shel",
    "Stan", "Stone", "Thorn", "Wal", "West", "Whit", "Wins", "Wood", "Wyn",
)
LAST_ENDS = (
    "ley", "ton", "wick", "ford", "by", "den", "more", "worth", "ridge", "field",
    "well", "wood", "lowe", "brook", "dale", "ham", "stead", "mere", "hurst", "combe",
    "ett", "ing", "son", "ard", "vale", "shaw", "cott", "land", "bury", "gate",
)
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Culture:
    """Given names and surnames that go together (written given name first, as an English text would)."""

    key: str
    given: tuple[str, ...]
    surnames: tuple[str, ...]


def _culture(key: str, given: str, surnames: str) -> Culture:
    return Culture(key, tuple(given.split()), tuple(surnames.split()))


CULTURES: tuple[Culture, ...] = (
    _culture("english",
             "James Mary Robert Linda Michael Susan William Karen David Nancy Thomas Margaret Charles Helen "
             "George Ruth Edward Alice Henry Grace Peter Emily Daniel Claire Samuel Hannah Oliver Lucy Jack Rose",
             "Smith Johnson Brown Taylor Wilson Davies Evans Roberts Walker Wright Thompson White Hughes Edwards "
             "Green Hall Wood Harris Clarke Turner Parker Cooper Hill Ward Morgan Baker Bennett Abernathy Fletcher "
             "Holloway"),
    _culture("spanish",
             "Alejandro Lucía Javier Carmen Miguel Isabel Diego Elena Pablo Sofía Carlos Marta Andrés Paula "
             "Fernando Rosa Jorge Beatriz Luis Pilar Antonio Inés Manuel Teresa Rafael Julia Sergio Raquel Mateo "
             "Valeria",
             "García Fernández González Rodríguez López Martínez Sánchez Pérez Gómez Martín Jiménez Ruiz "
             "Hernández Díaz Moreno Muñoz Álvarez Romero Navarro Torres Domínguez Vázquez Ramos Gil Serrano "
             "Molina Castillo Ortega Delgado Rubio"),
    _culture("german",
             "Lukas Anna Felix Lena Jonas Laura Maximilian Marie Tobias Jana Florian Katharina Stefan Sabine "
             "Matthias Petra Andreas Ursula Jürgen Monika Wolfgang Heike Klaus Birgit Dieter Greta Johannes "
             "Frieda Sebastian Lotte",
             "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Koch Richter Klein Wolf "
             "Schröder Neumann Schwarz Zimmermann Braun Krüger Hartmann Lange Werner Krause Lehmann Köhler Maier "
             "Vogel Keller Brandt"),
    _culture("french",
             "Jean Camille Pierre Amélie Louis Chloé Antoine Manon Nicolas Élise Julien Margaux Mathieu Céline "
             "Hugo Léa François Juliette Olivier Sylvie Étienne Aurélie Baptiste Odile Rémi Océane Thibault "
             "Margot Lucien Noémie",
             "Martin Bernard Dubois Robert Richard Petit Durand Leroy Moreau Simon Laurent Lefebvre Michel "
             "Garnier Rousseau Fontaine Chevalier Girard Bonnet Lambert Faure Mercier Blanc Guérin Boyer Morel "
             "Fournier Lemaire Dupont Perrin"),
    _culture("italian",
             "Marco Giulia Luca Francesca Giuseppe Chiara Alessandro Sara Matteo Valentina Lorenzo Elisa Davide "
             "Martina Stefano Federica Andrea Silvia Riccardo Alessia Giovanni Roberta Simone Paola Emanuele "
             "Beatrice Filippo Serena Tommaso Ilaria",
             "Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo Conti Lombardo "
             "Mancini Costa Giordano Rizzo Lombardi Moretti Barbieri Fontana Santoro Mariani Rinaldi Caruso "
             "Ferrara Galli Martini Leone"),
    _culture("portuguese",
             "João Ana Pedro Gabriel Mariana Larissa Thiago Camila Bruno Fernanda Rodrigo Juliana Gustavo "
             "Letícia Felipe Renata Eduardo Patrícia Vinícius Tatiana Leonardo Bianca Caio Luana Marcelo Helena "
             "Henrique Carolina Otávio Débora",
             "Silva Santos Oliveira Souza Rodrigues Ferreira Alves Pereira Araújo Gomes Ribeiro Martins Carvalho "
             "Almeida Lopes Soares Fernandes Vieira Barbosa Rocha Dias Nascimento Andrade Moreira Nunes Marques "
             "Machado Mendes Freitas Cardoso"),
    _culture("polish",
             "Piotr Agnieszka Krzysztof Katarzyna Tomasz Magdalena Paweł Joanna Marcin Monika Michał Aleksandra "
             "Jakub Zofia Łukasz Ewa Grzegorz Dorota Wojciech Justyna Bartosz Natalia Kamil Weronika Adam Halina "
             "Jan Barbara Marek Iwona",
             "Nowak Mazur Krawczyk Wójcik Kowalczyk Woźniak Dudek Zając Wieczorek Król Adamczyk Sikora Baran "
             "Kaczmarek Pietrzak Wróbel Stępień Kubiak Walczak Michalak Sobczak Kołodziej Szewczyk Kaźmierczak "
             "Cieślak Marciniak Bąk Sowa Lis Mroczek"),
    _culture("ukrainian",
             "Oleksandr Olena Andriy Iryna Dmytro Oksana Serhiy Nataliya Volodymyr Tetiana Mykola Yulia Taras "
             "Halyna Bohdan Kateryna Yuriy Svitlana Vasyl Larysa Ivan Mariya Oleh Nadiya Roman Viktoriya Petro "
             "Liudmyla Ostap Zoryana",
             "Shevchenko Kovalenko Bondarenko Tkachenko Kravchenko Oliynyk Shevchuk Polishchuk Boyko Tkachuk "
             "Lysenko Savchenko Rudenko Marchenko Moroz Melnyk Petrenko Klymenko Pavlenko Kuzmenko Levchenko "
             "Ponomarenko Vasylenko Karpenko Hrytsenko Kovalchuk Romanyuk Zinchenko Hnatyuk Didenko"),
    _culture("swedish",
             "Erik Astrid Lars Ingrid Anders Karin Johan Sofia Nils Elin Olof Maja Gustav Linnea Per Freja Magnus "
             "Ebba Sven Saga Henrik Agnes Axel Klara Oskar Tove Fredrik Sigrid Emil Alva",
             "Andersson Johansson Karlsson Nilsson Eriksson Larsson Olsson Persson Svensson Gustafsson Pettersson "
             "Jonsson Jansson Hansson Bengtsson Lindberg Lindqvist Lindström Bergström Lundgren Sandberg "
             "Forsberg Sjöberg Holm Engström Ekström Nyström Lundqvist Berglund Hedlund"),
    _culture("nigerian",
             "Adebayo Folake Chinedu Ngozi Oluwaseun Funmilayo Emeka Chiamaka Tunde Yetunde Ifeanyi Amaka "
             "Babatunde Kemi Obinna Nneka Segun Bisola Chukwuma Adaeze Kayode Titilayo Uche Ebere Olumide Zainab "
             "Ikenna Temitope Damilola Chidinma",
             "Adeyemi Okafor Balogun Okonkwo Eze Oyelaran Nwosu Ogunleye Obi Afolabi Uzor Bello Nwachukwu "
             "Akinola Chukwu Olawale Onyeka Adeleke Okeke Fashola Ibe Oladipo Anyanwu Babalola Igwe Ogunbiyi "
             "Ezeh Akande Okoye Adewale"),
    _culture("ghanaian",
             "Kwame Ama Kofi Akosua Kwabena Abena Yaw Efua Kojo Adwoa Kwaku Yaa Kwesi Esi Fiifi Afua Nana Akua "
             "Kobina Araba Ekow Aba Kweku Adjoa Selasi Dzifa Edem Mawuli Elikem Sena",
             "Mensah Osei Boateng Asante Owusu Agyeman Appiah Darko Acheampong Amoah Ofori Adjei Badu Quaye "
             "Tetteh Antwi Bonsu Sarpong Frimpong Gyamfi Opoku Nkrumah Ansah Kuffour Donkor Asamoah Oduro "
             "Amponsah Baffour Yeboah"),
    _culture("japanese",
             "Haruto Yui Sota Aoi Ren Hina Yuto Sakura Takumi Mei Kenji Yuki Hiroshi Akiko Daiki Naomi Kaito Rin "
             "Shota Emi Ryo Misaki Kazuki Nanami Takeshi Ayumi Kenta Haruka Tomoya Chihiro",
             "Sato Suzuki Takahashi Tanaka Watanabe Ito Yamamoto Nakamura Kobayashi Kato Yoshida Yamada Sasaki "
             "Yamaguchi Matsumoto Inoue Kimura Hayashi Shimizu Yamazaki Mori Abe Ikeda Hashimoto Ishikawa Ogawa "
             "Fujita Okada Goto Hasegawa"),
    _culture("chinese",
             "Wei Fang Jun Xiaoming Meiling Haoran Yuxuan Zihan Jiahui Yichen Shuang Lihua Jianguo Xiulan "
             "Guoqiang Yanping Zhiwei Huilan Chenguang Ruolan Tianyu Xinyi Junjie Shufen Haoyu Mingzhu Weiwei "
             "Jingyi Zhihao Qiuyue",
             "Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Xu Sun Ma Zhu Hu Guo Lin Gao Luo Zheng Liang Xie "
             "Song Tang Han Feng Deng Cao Peng Jiang"),
    _culture("korean",
             "Minjun Seoyeon Jiho Jiwoo Hyun Soyeon Dongwoo Eunji Joon Hana Sungmin Yuna Taeyang Minji Jaehyun "
             "Sora Hyunwoo Jisoo Seungho Dahye Woojin Haeun Kyungsoo Yejin Jinwoo Subin Sangwoo Chaeyoung "
             "Donghyun Nari",
             "Kim Lee Park Choi Jung Kang Cho Yoon Jang Lim Han Oh Seo Shin Kwon Hwang Ahn Song Yoo Hong Jeon Ko "
             "Moon Yang Son Bae Baek Heo Nam Noh"),
    _culture("indian",
             "Aarav Priya Rohan Ananya Vikram Kavya Arjun Divya Rahul Meera Sanjay Pooja Aditya Neha Karthik "
             "Lakshmi Amit Sunita Rajesh Aisha Vivek Shreya Nikhil Deepa Suresh Anjali Manoj Ritu Harish Swati",
             "Sharma Patel Singh Kumar Gupta Reddy Iyer Nair Mehta Joshi Rao Desai Chopra Malhotra Banerjee "
             "Chatterjee Mukherjee Pillai Menon Verma Kapoor Agarwal Bhat Shah Das Kulkarni Pandey Mishra Saxena "
             "Krishnan"),
    _culture("arabic",
             "Omar Fatima Ahmed Layla Youssef Mariam Khalid Noor Hassan Amira Ali Salma Karim Yasmin Tariq Huda "
             "Samir Rania Mahmoud Leila Ibrahim Dina Faisal Hanan Nabil Zeinab Rashid Lina Walid Samira",
             "Haddad Khalil Mansour Nasser Saleh Hamdan Aziz Farouk Rahman Habib Suleiman Khoury Darwish Hakim "
             "Qasim Said Jaber Najjar Sabbagh Hijazi Karam Bakr Issa Rashed Sayegh Tamimi Zaki Fakhoury Barakat "
             "Shami"),
    _culture("turkish",
             "Mehmet Ayşe Mustafa Fatma Emre Zeynep Burak Elif Can Merve Kemal Selin Murat Derya Onur Esra Serkan "
             "Gül Cem Deniz Hakan Ebru Volkan Pınar Tolga Aslı Kaan Şule Barış Nihan",
             "Yılmaz Kaya Demir Şahin Çelik Yıldız Yıldırım Öztürk Aydın Özdemir Arslan Doğan Kılıç Aslan Çetin "
             "Kara Koç Kurt Özkan Şimşek Polat Korkmaz Erdoğan Güneş Aksoy Tekin Ünal Bulut Keskin Turan"),
    _culture("vietnamese",
             "Minh Lan Tuan Huong Duc Mai Hung Thu Long Linh Quang Trang Khoa Ngoc Phuong Hieu Hanh Bao Thao "
             "Dung Nam Hoa Son Yen Vinh Nhung Thanh Anh Cuong Diep",
             "Nguyen Tran Le Pham Hoang Phan Vu Vo Dang Bui Do Ho Ngo Duong Ly Trinh Dinh Truong Lam Ta Cao Chu "
             "Luong Doan Quach Kieu Vuong Thai La Huynh"),
    _culture("irish",
             "Aoife Cian Siobhan Ciaran Niamh Eoin Saoirse Padraig Orla Declan Roisin Fergal Aisling Darragh "
             "Grainne Ronan Maeve Colm Sinead Oisin Clodagh Tadhg Eimear Donal Fionnuala Brendan Caoimhe Lorcan "
             "Deirdre Seamus",
             "Murphy Kelly O'Sullivan Walsh O'Brien Byrne Ryan O'Connor O'Neill Reilly Doyle McCarthy Gallagher "
             "Doherty Kennedy Lynch Murray Quinn Moore McLoughlin Carroll Connolly Daly Connell Dunne Brennan "
             "Burke Collins Flanagan Nolan"),
    _culture("hebrew",
             "Noa Yosef Tamar Eitan Shira Avi Yael Moshe Maya Ariel Talia Ido Michal Noam Liora Gideon Rivka "
             "Yonatan Efrat Uri Hadas Boaz Orly Nadav Ayelet Itai Dalia Lior Keren Yair",
             "Cohen Levi Mizrahi Peretz Biton Dahan Avraham Friedman Azoulay Katz Malka Amar Ben-David Shapiro "
             "Golan Segal Rosen Weiss Barak Navon Harel Sasson Ohana Shalom Tal Hadad Gabay Ashkenazi Elbaz "
             "Ben-Ami"),
)
# Cultures in which a double-barrelled surname reads naturally.
HYPHEN_CULTURES = ("english", "spanish", "german", "french", "portuguese", "polish", "swedish", "irish",
                   "ghanaian", "nigerian", "hebrew", "italian")
TITLES = ("Dr.", "Professor", "Captain", "Judge", "Senator", "Colonel", "Reverend", "Admiral", "Inspector",
          "Commander", "Sergeant", "Lieutenant")
INITIALS = tuple("ABCDEFGHJKLMNOPRSTVWY")


def is_test_key(key: str) -> bool:
    """True iff `key` (a name, an article title) belongs to the test split: SHA-256(key) as an integer is 0 mod 10."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    return int(digest, 16) % 10 == 0


def name_split(name: str, key: str | None = None) -> str | None:
    """'test' or 'train' for a name (and its plain key, default the name itself); None when they disagree."""
    test = is_test_key(name)
    if key is not None and key != name and is_test_key(key) != test:
        return None
    return "test" if test else "train"


# ---------------------------------------------------------------- styles


def random_name(rng: random.Random) -> str:
    """One invented full name such as 'Evan Marlowe', drawn without regard to the split."""
    first = rng.choice(FIRST_STARTS) + rng.choice(FIRST_ENDS)
    last = rng.choice(LAST_STARTS) + rng.choice(LAST_ENDS)
    return f"{first} {last}"


def _invented_draw(rng: random.Random) -> tuple[str, str]:
    name = random_name(rng)
    return name, name


def _invented_all() -> Iterator[tuple[str, str]]:
    firsts = sorted({a + b for a in FIRST_STARTS for b in FIRST_ENDS})
    lasts = sorted({a + b for a in LAST_STARTS for b in LAST_ENDS})
    for first in firsts:
        for last in lasts:
            name = f"{first} {last}"
            yield name, name


def _common_pair(rng: random.Random) -> tuple[str, str]:
    culture = rng.choice(CULTURES)
    return rng.choice(culture.given), rng.choice(culture.surnames)


@lru_cache(maxsize=1)
def _common_pairs() -> tuple[tuple[str, str], ...]:
    return tuple(sorted({(g, s) for c in CULTURES for g in c.given for s in c.surnames}))


def _common_draw(rng: random.Random) -> tuple[str, str]:
    given, surname = _common_pair(rng)
    name = f"{given} {surname}"
    return name, name


def _common_all() -> Iterator[tuple[str, str]]:
    for given, surname in _common_pairs():
        name = f"{given} {surname}"
        yield name, name


def _initials_draw(rng: random.Random) -> tuple[str, str]:
    given, surname = _common_pair(rng)
    return f"{given} {rng.choice(INITIALS)}. {surname}", f"{given} {surname}"


def _initials_all() -> Iterator[tuple[str, str]]:
    for given, surname in _common_pairs():
        for initial in INITIALS:
            yield f"{given} {initial}. {surname}", f"{given} {surname}"


def _titled_draw(rng: random.Random) -> tuple[str, str]:
    given, surname = _common_pair(rng)
    return f"{rng.choice(TITLES)} {given} {surname}", f"{given} {surname}"


def _titled_all() -> Iterator[tuple[str, str]]:
    for given, surname in _common_pairs():
        for title in TITLES:
            yield f"{title} {given} {surname}", f"{given} {surname}"


def _hyphen_cultures() -> tuple[Culture, ...]:
    return tuple(c for c in CULTURES if c.key in HYPHEN_CULTURES)


def _hyphenated_draw(rng: random.Random) -> tuple[str, str]:
    culture = rng.choice(_hyphen_cultures())
    given = rng.choice(culture.given)
    first, second = rng.sample(culture.surnames, 2)
    name = f"{given} {first}-{second}"
    return name, name


def _hyphenated_all() -> Iterator[tuple[str, str]]:
    names = {f"{g} {a}-{b}" for c in _hyphen_cultures() for g in c.given for a in c.surnames for b in c.surnames
             if a != b}
    for name in sorted(names):
        yield name, name


@dataclass(frozen=True)
class NameStyle:
    """How one style draws a (name, key) pair, and every distinct pair it can draw."""

    key: str
    example: str
    draw: Callable[[random.Random], tuple[str, str]]
    everything: Callable[[], Iterator[tuple[str, str]]]
    size: int  # how many (name, key) combinations it draws from, before de-duplication and the split


_COMMON = sum(len(c.given) * len(c.surnames) for c in CULTURES)
NAME_STYLES: dict[str, NameStyle] = {style.key: style for style in (
    NameStyle("invented", "Evan Marlowe", _invented_draw, _invented_all,
              len(FIRST_STARTS) * len(FIRST_ENDS) * len(LAST_STARTS) * len(LAST_ENDS)),
    NameStyle("common", "Kwame Mensah", _common_draw, _common_all, _COMMON),
    NameStyle("initials", "Ana K. Oliveira", _initials_draw, _initials_all, _COMMON * len(INITIALS)),
    NameStyle("titled", "Dr. Ruth Abernathy", _titled_draw, _titled_all, _COMMON * len(TITLES)),
    NameStyle("hyphenated", "Lucía García-Navarro", _hyphenated_draw, _hyphenated_all,
              sum(len(c.given) * len(c.surnames) * (len(c.surnames) - 1) for c in _hyphen_cultures())),
)}


def name_style(key: str) -> NameStyle:
    if key not in NAME_STYLES:
        raise InputError(f"unknown name style '{key}' (choose from {', '.join(NAME_STYLES)})")
    return NAME_STYLES[key]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown name split '{split}' (choose from {', '.join(SPLITS)})")


def iter_names(style: str, split: str) -> Iterator[str]:
    """Every distinct name of `style` in `split`, in a fixed order."""
    _check_split(split)
    for name, key in name_style(style).everything():
        if name_split(name, key) == split:
            yield name


@cache
def name_pool(style: str, split: str) -> int:
    """How many distinct names of `style` belong to `split` (counted once per process)."""
    return sum(1 for _ in iter_names(style, split))


def name_pool_size() -> int:
    """How many distinct invented full names the generator can produce (before the train/test split)."""
    return len(FIRST_STARTS) * len(FIRST_ENDS) * len(LAST_STARTS) * len(LAST_ENDS)


def name_syllables() -> list[str]:
    """Every syllable names are built from, in a fixed order (material for training a tokenizer)."""
    return [*FIRST_STARTS, *FIRST_ENDS, *LAST_STARTS, *LAST_ENDS]


def sample_name(rng: random.Random, split: str, style: str = "invented") -> str:
    """Draw names of `style` from `rng` until one belongs to `split` ('train' or 'test'); return it."""
    return sample_name_key(rng, split, style)[0]


def sample_name_key(rng: random.Random, split: str, style: str = "invented") -> tuple[str, str]:
    """Like `sample_name`, returning the (name, key) pair."""
    _check_split(split)
    draw = name_style(style).draw
    while True:
        name, key = draw(rng)
        if name_split(name, key) == split:
            return name, key
