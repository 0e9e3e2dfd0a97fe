<?php
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}
page_start('Home');
?>
<h1>Welcome to Acme Home Goods</h1>
<p>This page is served by legacy PHP. The links below are a mix: some pages
this old site still serves, and some it has handed over to the new Python app.
Through fallthrough, every one of them works.</p>

<h2>Still served by legacy PHP</h2>
<ul>
  <li><a href="/about.php">/about.php</a></li>
  <li><a href="/contact.php">/contact.php</a> (form, try posting it)</li>
  <li><a href="/news.php">/news.php</a></li>
  <li><a href="/products">/products</a>, <a href="/products/1">/products/1</a>, <a href="/products/2">/products/2</a></li>
</ul>

<h2>Moved to the new Python app (this site answers 404)</h2>
<ul>
  <li><a href="/products/3">/products/3</a>, <a href="/products/4">/products/4</a></li>
  <li><a href="/blog/">/blog/</a></li>
  <li><a href="/api/products">/api/products</a> (JSON)</li>
</ul>

<h2>Served by nobody</h2>
<ul>
  <li><a href="/products/999">/products/999</a></li>
</ul>
<?php
page_end();
