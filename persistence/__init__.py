"""persistence: the Store contract, MongoStore on pymongo, the embedded SecantusDB launcher and the in-memory Store."""
