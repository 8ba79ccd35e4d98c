"""promptstep: can one gradient step on a text do what putting the text in the prompt does?"""

from promptstep.data.triplets import Triplet, load_triplets, write_triplets
from promptstep.errors import InputError

__all__ = ["InputError", "Triplet", "load_triplets", "write_triplets"]
__version__ = "0.1.0"
