"""RAG-style extraction: fields from a retrieved passage, held to a JSON schema.

    python examples/json_extraction.py
"""

import json

import runtime as rt

PASSAGE = ("Marie Curie was a physicist and chemist. She was born in Warsaw in 1867 and later moved "
           "to Paris, where she won two Nobel Prizes.")
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string"}, "birth_city": {"type": "string"},
                         "birth_year": {"type": "integer"}},
          "required": ["name", "birth_city", "birth_year"], "additionalProperties": False}


@rt.function
def extract(s, passage):
    s += rt.user(f"Extract the name, birth city and birth year from this text as JSON.\n\nText: {passage}")
    s += rt.assistant(rt.gen("record", json_schema=json.dumps(SCHEMA), max_tokens=64, temperature=0))


def main():
    with rt.Runtime() as backend:
        record = json.loads(extract.run(passage=PASSAGE, backend=backend)["record"])
        print(record)


if __name__ == "__main__":
    main()
