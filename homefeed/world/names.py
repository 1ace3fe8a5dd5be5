"""Word lists for the synthetic shop: standard categories (with durable/consumable kind), leaf-name
modifiers, colours, cities, brand syllables. Plain data, no logic.

A leaf category's name is a variant of its standard category's name ("Dress" -> "Lace Dress",
"Dress Set", "mini-dress"), so character n-grams of leaf names carry the standard category.
"""
from __future__ import annotations

# (name, kind): consumables are re-bought within days or weeks, durables within months or a year.
STANDARD_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("Dress", "durable"), ("T-shirt", "durable"), ("Jeans", "durable"), ("Sneakers", "durable"),
    ("Coffee", "consumable"), ("Tea", "consumable"), ("Snacks", "consumable"), ("Lipstick", "consumable"),
    ("Phone Case", "durable"), ("Headphones", "durable"), ("Shampoo", "consumable"), ("Diapers", "consumable"),
    ("Handbag", "durable"), ("Backpack", "durable"), ("Watch", "durable"), ("Facial Mask", "consumable"),
    ("Toothpaste", "consumable"), ("Pet Food", "consumable"), ("Rice Cooker", "durable"), ("Air Fryer", "durable"),
    ("Sofa", "durable"), ("Bed Sheets", "durable"), ("Desk Lamp", "durable"), ("Office Chair", "durable"),
    ("Milk Powder", "consumable"), ("Tissue", "consumable"), ("Laundry Detergent", "consumable"),
    ("Instant Noodles", "consumable"), ("Nuts", "consumable"), ("Chocolate", "consumable"), ("Sunscreen", "consumable"),
    ("Yoga Mat", "durable"), ("Dumbbells", "durable"), ("Keyboard", "durable"), ("Mouse", "durable"),
    ("Power Bank", "durable"), ("Charger", "durable"), ("Smartwatch", "durable"), ("Sunglasses", "durable"),
    ("Scarf", "durable"), ("Coat", "durable"), ("Sweater", "durable"), ("Hoodie", "durable"), ("Pajamas", "durable"),
    ("Socks", "consumable"), ("Body Wash", "consumable"), ("Hand Cream", "consumable"), ("Perfume", "consumable"),
    ("Cat Litter", "consumable"), ("Baby Wipes", "consumable"), ("Cooking Oil", "consumable"), ("Rice", "consumable"),
    ("Vitamins", "consumable"), ("Protein Powder", "consumable"), ("Face Cleanser", "consumable"),
    ("Toner", "consumable"), ("Serum", "consumable"), ("Mascara", "consumable"), ("Nail Polish", "consumable"),
    ("Razor Blades", "consumable"), ("Batteries", "consumable"), ("Trash Bags", "consumable"),
    ("Dish Soap", "consumable"), ("Cereal", "consumable"), ("Honey", "consumable"), ("Yogurt", "consumable"),
    ("Fruit", "consumable"), ("Wine", "consumable"), ("Beer", "consumable"), ("Contact Lenses", "consumable"),
    ("Cotton Pads", "consumable"), ("Hair Dye", "consumable"), ("Frozen Dumplings", "consumable"),
    ("Seafood", "consumable"), ("Spices", "consumable"), ("Laptop", "durable"), ("Tablet", "durable"),
    ("Monitor", "durable"), ("Camera", "durable"), ("Smart Speaker", "durable"), ("Blender", "durable"),
    ("Vacuum Cleaner", "durable"), ("Air Purifier", "durable"), ("Humidifier", "durable"),
    ("Electric Kettle", "durable"), ("Pillow", "durable"), ("Curtains", "durable"), ("Rug", "durable"),
    ("Storage Box", "durable"), ("Cookware", "durable"), ("Knife Set", "durable"), ("Water Bottle", "durable"),
    ("Umbrella", "durable"), ("Hat", "durable"), ("Down Jacket", "durable"), ("Swimsuit", "durable"),
    ("Bicycle", "durable"), ("Tent", "durable"), ("Fishing Rod", "durable"), ("Toy Car", "durable"),
    ("Building Blocks", "durable"), ("Doll", "durable"), ("Puzzle", "durable"), ("Stroller", "durable"),
    ("Car Seat", "durable"), ("Pet Bed", "durable"), ("Guitar", "durable"), ("Board Game", "durable"),
    ("Printer", "durable"), ("Router", "durable"), ("Drone", "durable"), ("Electric Toothbrush", "durable"),
    ("Hair Dryer", "durable"), ("Shaver", "durable"), ("Massage Gun", "durable"), ("Necklace", "durable"),
    ("Earrings", "durable"), ("Wallet", "durable"), ("Belt", "durable"), ("Luggage", "durable"),
    ("Boots", "durable"), ("Sandals", "durable"), ("Skirt", "durable"),
)

MODIFIERS: tuple[str, ...] = (
    "Classic", "Mini", "Pro", "Kids", "Women's", "Men's", "Travel", "Premium", "Organic", "Slim", "Wireless",
    "Vintage", "Summer", "Winter", "Deluxe", "Basic", "Sport", "Portable", "Luxury", "Eco", "Smart", "Lace",
)
SUFFIXES: tuple[str, ...] = ("Set", "Pack", "Plus", "Lite", "Max", "Kit", "Combo")

ADJECTIVES: tuple[str, ...] = (
    "new", "hot", "soft", "light", "quality", "original", "official", "limited", "genuine", "comfy", "cute",
    "elegant", "simple", "durable", "fresh",
)
COLOURS: tuple[str, ...] = (  # by hue bucket, matching the item image's foreground colour
    "red", "orange", "amber", "yellow", "lime", "green", "teal", "cyan", "blue", "indigo", "purple", "pink",
)

CITIES: tuple[tuple[str, int], ...] = (  # (city, tier): tier 1 cities skew to higher purchase power
    ("Shanghai", 1), ("Beijing", 1), ("Shenzhen", 1), ("Guangzhou", 1), ("Hangzhou", 2), ("Chengdu", 2),
    ("Wuhan", 2), ("Nanjing", 2), ("Xi'an", 2), ("Chongqing", 2), ("Suzhou", 2), ("Tianjin", 2),
    ("Changsha", 3), ("Zhengzhou", 3), ("Qingdao", 3), ("Kunming", 3), ("Harbin", 3), ("Nanning", 3),
    ("Lanzhou", 4), ("Guiyang", 4), ("Yinchuan", 4), ("Xining", 4),
)

SYLLABLES: tuple[str, ...] = (
    "lu", "ma", "ko", "ri", "sa", "ne", "to", "vi", "xa", "zen", "qi", "bo", "da", "fei", "li", "mo", "na",
    "pu", "ra", "shi", "ta", "wu", "yo", "zi", "ka", "ren", "jia", "hao", "mei", "an",
)

AGE_EDGES: tuple[int, ...] = (25, 30, 35, 45)  # age buckets <25, 25-29, 30-34, 35-44, 45+
