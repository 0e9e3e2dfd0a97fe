<?php
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}
page_start('News');
?>
<h1>News</h1>
<dl>
  <dt>14 March 2014</dt><dd>The oak bookshelf is back in stock.</dd>
  <dt>2 December 2013</dt><dd>Free delivery on orders over 100.00 until Christmas.</dd>
</dl>
<p>Newer posts live on the <a href="/blog/">blog</a>, which the new Python app serves.
This page is served by legacy PHP.</p>
<?php
page_end();
