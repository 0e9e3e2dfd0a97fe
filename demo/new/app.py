"""The new Acme Home Goods app: the pages the legacy PHP site no longer serves.

Run it with gunicorn from this directory:

    gunicorn -b 127.0.0.1:8082 -w 2 app:app

fallthrough sends every request to the PHP site first and replays it here
only when PHP answers 404, so this app only needs the URLs that have moved.
"""

import hashlib
from html import escape

from flask import Flask, abort, jsonify, request

app = Flask(__name__)

# The whole catalogue. Products 1 and 2 are here too, but PHP still serves
# them, so through fallthrough you only ever see PHP's pages for those two.
PRODUCTS = {
    1: {"name": "Brass desk lamp", "price": "39.00"},
    2: {"name": "Oak bookshelf", "price": "149.00"},
    3: {"name": "Linen tea towels (set of 3)", "price": "18.00"},
    4: {"name": "Cast iron doorstop", "price": "24.00"},
    5: {"name": "Walnut chopping board", "price": "45.00"},
}

POSTS = {
    "moving-to-python": {
        "title": "We are moving to a new website",
        "body": "Page by page, our old PHP site is handing over to this one. "
        "You should not notice a thing.",
    },
    "linen-is-back": {
        "title": "Linen tea towels are back",
        "body": "Three towels, three colours, one price.",
    },
}


def page(title, body_html, status=200):
    """Wraps body_html in the new app's page layout."""
    html = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{escape(title)} | Acme</title>
<style>body{{font-family:system-ui,sans-serif;max-width:42em;margin:2em auto}}
header{{background:#306998;color:#fff;padding:.5em 1em}} footer{{color:#777;font-size:small;margin-top:3em}}
.notfound{{border:2px solid #ffd43b;background:#fff8dc;padding:1em}}</style></head>
<body>
<header><strong>Acme</strong> &middot; the new site</header>
<main>
{body_html}
</main>
<footer>served by new Python app (Flask)</footer>
</body>
</html>
"""
    return html, status, {"Content-Type": "text/html; charset=utf-8"}


@app.after_request
def mark_origin(response):
    response.headers["X-Served-By"] = "new-python"
    return response


@app.get("/products/<int:product_id>")
def product(product_id):
    item = PRODUCTS.get(product_id) or abort(404)
    return page(
        item["name"],
        f"<h1>{escape(item['name'])}</h1>\n<p>Price: {escape(item['price'])}</p>\n"
        "<p>This product page is served by the new Python app.</p>",
    )


@app.get("/api/products")
def api_products():
    return jsonify(
        served_by="new-python",
        products=[{"id": pid, **item} for pid, item in sorted(PRODUCTS.items())],
    )


@app.get("/api/products/<int:product_id>")
def api_product(product_id):
    item = PRODUCTS.get(product_id) or abort(404)
    return jsonify(served_by="new-python", id=product_id, **item)


@app.get("/blog/")
def blog_index():
    links = "\n".join(
        f'<li><a href="/blog/{slug}">{escape(post["title"])}</a></li>'
        for slug, post in POSTS.items()
    )
    return page("Blog", f"<h1>Blog</h1>\n<ul>\n{links}\n</ul>\n<p>Served by the new Python app.</p>")


@app.get("/blog/<slug>")
def blog_post(slug):
    post = POSTS.get(slug) or abort(404)
    return page(
        post["title"],
        f"<h1>{escape(post['title'])}</h1>\n<p>{escape(post['body'])}</p>\n"
        "<p>Served by the new Python app.</p>",
    )


@app.post("/api/echo")
def api_echo():
    """Describes the request body, so you can check that a POST replayed
    by fallthrough (after PHP's 404) arrived byte for byte."""
    body = request.get_data(cache=False)
    return jsonify(
        served_by="new-python",
        method=request.method,
        content_type=request.headers.get("Content-Type"),
        length=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )


@app.errorhandler(404)
def not_found(_error):
    return page(
        "Not found",
        '<div class="notfound">\n<h1>Not found (new Python app)</h1>\n'
        f"<p>Neither the legacy PHP site nor the new Python app has a page at "
        f"<code>{escape(request.path)}</code>.</p>\n</div>",
        status=404,
    )
