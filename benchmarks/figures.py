"""Pictures of an evaluated run (ranked lists, CMC curves): the library's :mod:`hbfp_timm.inference.visualize`, under the
names the harness uses."""
from hbfp_timm.inference.visualize import MATCH_COLOUR, MISMATCH_COLOUR, QUERY_COLOUR, draw_cmc_curves, draw_ranked_lists

__all__ = ['MATCH_COLOUR', 'MISMATCH_COLOUR', 'QUERY_COLOUR', 'draw_ranked_lists', 'draw_cmc_curves']
