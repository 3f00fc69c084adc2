"""The paper's reported numbers (Ahn & Nam 2025; SPEC §1): its Table 3 rows and the other systems it
compares with, for the report and the per-epoch table to print ours beside."""

PAPER_TEST_SIZE = 2500


# SPEC §1, paper Table 3: acc, flu, pro, total PCC, WER, PER, F1, P, R
PAPER_TABLE3 = [
    ("no training", 0, -0.041, -0.017, -0.049, -0.104, 0.97, 0.792, 0.143, 0.154, 0.134),
    ("LoRA", 1, 0.547, 0.585, 0.567, 0.544, 0.150, 0.137, 0.686, 0.689, 0.682),
    ("LoRA", 2, 0.637, 0.726, 0.709, 0.662, 0.139, 0.118, 0.722, 0.725, 0.719),
    ("LoRA", 3, 0.656, 0.727, 0.711, 0.675, 0.140, 0.114, 0.724, 0.728, 0.721),
    ("LoRA", 4, 0.645, 0.733, 0.714, 0.668, 0.148, 0.121, 0.721, 0.723, 0.720),
    ("Unfreeze", 4, 0.743, 0.717, 0.704, 0.666, 0.142, 0.142, 0.667, 0.671, 0.663),
]
# SPEC §1, other systems: sentence PCC acc, flu, pro, total; PER; MDD F1 (standard protocol)
OTHER_SYSTEMS = [
    ("GOPT", 0.714, 0.753, 0.760, 0.742, None, None),
    ("Joint-CAPT-L1", 0.719, 0.775, 0.773, 0.743, 0.099, 0.415),
    ("Azure Pronunciation Assessment", 0.70, 0.715, 0.842, 0.782, None, None),
    ("3M", 0.760, 0.828, 0.827, 0.796, None, None),
    ("HMamba", 0.807, 0.848, 0.843, 0.829, None, 0.639),
    ("MuFFIN", 0.807, 0.841, 0.832, 0.830, None, 0.660),
]
# SPEC §1: GOPT (Gong et al. 2022) phone accuracy MSE and PCC over every SpeechOcean762 test phone
GOPT_PHONE = (0.085, 0.612)
# GOPT's three granularities (SPEC §1), in GRANULARITY_COLUMNS' order; None: the SPEC does not give it.
GRANULARITY_COLUMNS = ("phone_mse", "phone_pcc", "word_accuracy", "word_stress", "word_total", "utt_accuracy",
                       "utt_completeness", "utt_fluency", "utt_prosodic", "utt_total")
GRANULARITY_HEADERS = ("phone MSE", "phone PCC", "word acc", "word stress", "word total", "utt acc",
                       "utt compl", "utt flu", "utt pro", "utt total")
GRANULARITY_SYSTEMS = [
    ("GOPT (Gong et al. 2022)", *GOPT_PHONE, 0.533, 0.291, 0.549, 0.714, 0.155, 0.753, 0.760, 0.742),
    ("3M", None, None, None, None, None, 0.760, None, 0.828, 0.827, 0.796),
    ("HMamba", None, None, None, None, None, 0.807, None, 0.848, 0.843, 0.829),
    ("MuFFIN", None, None, None, None, None, 0.807, None, 0.841, 0.832, 0.830),
]
