<?php
// Only router.php shows this; asked for by its own URL (PHP-FPM runs it then), a 404.
if (!defined('LEGACY_ROUTER')) {
    http_response_code(404);
    exit;
}
page_start('About us');
?>
<h1>About us</h1>
<p>Acme Home Goods has sold lamps, shelves and other sturdy things since 2009.
This website was written in PHP that same year and has grown a page at a time
ever since.</p>
<p>We are moving it to a new Python application, one URL at a time.
This page has not moved yet: it is served by legacy PHP.</p>
<?php
page_end();
