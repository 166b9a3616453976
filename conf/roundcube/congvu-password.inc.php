<?php
// congvu: Roundcube's password plugin, "httpapi" driver, pointed at congvu's API
// (POST /api/password, served by `congvu authd` on [authhooks] web_listen).
//
// Append to plugins/password/config.inc.php (or config/config.inc.php) and enable the
// plugin: $config['plugins'][] = 'password';
//
// congvu enforces the rules itself (CT25-5.3 composition, zxcvbn strength, no name
// inside, history of [password] history, CT25-5.2 must_change cleared on success) and
// verifies the current password again (roundcube#8142).  It answers 200 with body "OK"
// on success; any other answer is a 4xx with a JSON reason (Roundcube logs the body and
// shows "Could not save new password").  Users whose password must be changed or has
// expired cannot log in to Roundcube at all (IMAP says NO [EXPIRED]): they use the page
// at https://mail.<domain>/doimatkhau/ (conf/nginx/congvu-password.conf).
//
// When Roundcube runs on the same host, call the backend on loopback (no TLS needed);
// from another host, use https://mail.<domain>/doimatkhau/api/password and list the
// Roundcube host in [authhooks] lockout_exempt (it changes passwords for everyone, so
// it must not be rate-limited or locked out per IP).

$config['password_driver'] = 'httpapi';
$config['password_httpapi_url'] = 'http://127.0.0.1:8080/api/password';
$config['password_httpapi_method'] = 'POST';            // never GET: it would log passwords
$config['password_httpapi_var_user'] = 'user';
$config['password_httpapi_var_curpass'] = 'curpass';
$config['password_httpapi_var_newpass'] = 'newpass';
$config['password_httpapi_expect'] = '/^ok$/i';
$config['password_username_format'] = '%u';            // the full address, as Dovecot sees it
$config['password_confirm_current'] = true;
$config['password_minimum_length'] = 8;                 // CT25-5.3 (congvu checks it again)
$config['password_http_client'] = ['timeout' => 15];
