"""The paper's own figures, typed from Derm-T2IM (Farooq et al. 2024), never read from our schema."""

#: Table IV, test accuracy (%): (model, regime, test set) -> value
TABLE_IV = {
    ("mobilenet_v2", "real", "isic"): 78.89,
    ("mobilenet_v2", "real", "ham10000"): 70.33,
    ("vit", "real", "isic"): 90.74,
    ("vit", "real", "ham10000"): 81.50,
    ("mobilenet_v2", "hybrid", "isic"): 81.35,
    ("mobilenet_v2", "hybrid", "ham10000"): 73.58,
    ("vit", "hybrid", "isic"): 93.03,
    ("vit", "hybrid", "ham10000"): 85.02,
}
